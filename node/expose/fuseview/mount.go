package fuseview

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path"
	"strconv"
	"syscall"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/ipfs/go-cid"
	"golang.org/x/sys/unix"

	"github.com/p2pimg/p2pimg/chunk"
)

// Mount serves m (a flattened manifest, already validated) at dir, which
// must be an existing directory. The view serves until Unmount.
func Mount(dir string, m *chunk.Manifest, cfg Config) (*View, error) {
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("fuse view at %s: %w", dir, err)
	}
	if cfg.FetchTimeout <= 0 {
		cfg.FetchTimeout = 10 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.DiskMin <= 0 {
		cfg.DiskMin = defaultDiskMin
	}
	cache, _ := lru.New[cid.Cid, []byte](64)
	v := &View{dir: dir, cfg: cfg, hash: m.Params.Hash, zeroIDs: map[uint32]cid.Cid{}, cache: cache, disks: map[string]*diskNode{}}
	if err := v.openDisks(m); err != nil {
		return nil, fmt.Errorf("fuse view at %s: %w", dir, err)
	}
	flags := uintptr(syscall.MS_NODEV)
	if len(v.disks) == 0 {
		flags |= syscall.MS_RDONLY
	}
	root := &dirNode{}
	ttl := cacheTTL
	opts := &fusefs.Options{
		EntryTimeout: &ttl, AttrTimeout: &ttl, NegativeTimeout: &ttl,
		OnAdd: func(ctx context.Context) { v.build(ctx, root, m) },
		MountOptions: fuse.MountOptions{
			AllowOther: true, // the overlay above it, and every user the modes allow
			FsName:     cfg.Name, Name: "p2pimg",
			Options:           []string{"default_permissions"}, // the kernel checks the manifest's modes
			DirectMountStrict: true,
			DirectMountFlags:  flags,
			MaxReadAhead:      1 << 20,
			MaxWrite:          1 << 20,
			DisableXAttrs:     false, // from the manifest
		},
	}
	v.readers = startReaders(readerCount)
	srv, err := fusefs.Mount(dir, root, opts)
	if err != nil {
		v.readers.stop()
		v.closeDisks()
		return nil, fmt.Errorf("mount fuse view at %s: %w", dir, err)
	}
	v.server = srv
	if err := raiseReadAhead(dir, readAhead); err != nil {
		cfg.Log.Debug("fuse view: kernel read-ahead left at its default", "dir", dir, "err", err)
	}
	return v, nil
}

// Linux 6.18 caches a FUSE file in 4 KiB folios whatever MaxWrite and
// max_pages say (ext4: large folios; /proc/kpageflags shows no compound
// page in a warm view, 441 in 64 MiB of a checkout), which bounds warm
// reads; passthrough
// cannot serve from packs (no offset mapping, headers between chunks, and
// it would skip the CRC-32C check of every pack read).

// readAhead is the kernel read-ahead a view asks for. The kernel caps a
// FUSE mount's read-ahead, and so the size of the reads it sends, at its
// backing device's read_ahead_kb (128 KiB), whatever the server asked for
// at init: a sequential read then costs a round trip to the daemon per
// 128 KiB, with one or two in flight. With more, each read is 1 MiB
// (MaxWrite bounds it) and several are in flight. 16 MiB (with room for
// 64 background requests) measured slower on cold reads than 4 MiB.
const readAhead = 4 << 20

// raiseReadAhead sets the read-ahead of the mount at dir (root only; a
// failure costs speed, never correctness).
func raiseReadAhead(dir string, n int) error {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return err
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	return os.WriteFile(p, []byte(strconv.Itoa(n>>10)), 0)
}

// Dir is the mount point.
func (v *View) Dir() string { return v.dir }

// unmountWait bounds how long Unmount waits for the kernel to let go of a
// view that is still in use (a file held open, a mount above it).
const unmountWait = 5 * time.Second

// Unmount takes the view away and waits for its server to stop. A busy
// view is detached; if it is still held after unmountWait its FUSE
// connection is aborted (reads of it fail from then on), so the daemon
// never hangs on its way out and leaves no mount behind.
func (v *View) Unmount() error {
	var st syscall.Stat_t
	statErr := syscall.Stat(v.dir, &st)
	if err := v.server.Unmount(); err != nil {
		if err2 := syscall.Unmount(v.dir, syscall.MNT_DETACH); err2 != nil {
			return fmt.Errorf("unmount fuse view %s: %w", v.dir, err)
		}
	}
	done := make(chan struct{})
	go func() { v.server.Wait(); close(done) }()
	defer v.readers.stop()
	defer v.closeDisks() // once no request can reach them
	select {
	case <-done:
		return nil
	case <-time.After(unmountWait):
	}
	if statErr == nil {
		abort := fmt.Sprintf("/sys/fs/fuse/connections/%d/abort", unix.Minor(st.Dev))
		if err := os.WriteFile(abort, []byte("1"), 0o200); err != nil {
			return fmt.Errorf("unmount fuse view %s: still in use after %v, and abort failed: %w", v.dir, unmountWait, err)
		}
	}
	<-done
	return nil
}

// build makes the inode tree. Entries are sorted, so a directory comes
// before what it holds.
func (v *View) build(ctx context.Context, root *dirNode, m *chunk.Manifest) {
	dirs := map[string]*fusefs.Inode{".": root.EmbeddedInode()}
	files := map[string]*fusefs.Inode{} // hard link targets
	subdirs := map[string]uint32{}
	for i := range m.Entries {
		e := &m.Entries[i]
		parent := dirs[path.Dir(e.Path)]
		if parent == nil {
			continue // Validate guarantees parents; be safe anyway
		}
		if t := files[e.Link]; t != nil { // a hard link: the target's inode under another name
			parent.AddChild(path.Base(e.Path), t, false)
			t.Operations().(interface{ addLink() }).addLink()
			continue
		}
		ino := uint64(i) + 2 // 1 is the root
		var node fusefs.InodeEmbedder
		var mode uint32
		switch e.Type {
		case chunk.Dir:
			node, mode = &dirNode{e: e}, syscall.S_IFDIR
			subdirs[path.Dir(e.Path)]++
		case chunk.Symlink:
			node, mode = &linkNode{e: e}, syscall.S_IFLNK
		default:
			node, mode = newFileNode(v, e), syscall.S_IFREG
			if d, ok := v.disks[e.Path]; ok {
				node = d
			}
		}
		child := parent.NewPersistentInode(ctx, node, fusefs.StableAttr{Mode: mode, Ino: ino})
		parent.AddChild(path.Base(e.Path), child, false)
		switch e.Type {
		case chunk.Dir:
			dirs[e.Path] = child
		case chunk.File:
			files[e.Path] = child
		}
	}
	for p, in := range dirs {
		if d, ok := in.Operations().(*dirNode); ok {
			d.nlink = 2 + subdirs[p]
		}
	}
}
