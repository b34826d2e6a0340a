package fuseview

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
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
	life, stop := context.WithCancel(context.Background())
	if cfg.Fetch != nil {
		cfg.Fetch = stopping{cfg.Fetch, life}
	}
	v := &View{dir: dir, cfg: cfg, hash: m.Params.Hash, zeroIDs: map[uint32]cid.Cid{}, cache: cache, disks: map[string]*diskNode{},
		stop: stop}
	if cfg.DeltaDir != "" && cfg.Reserve > 0 {
		v.space = &spaceGuard{dir: cfg.DeltaDir, reserve: cfg.Reserve}
	}
	if err := v.openDisks(m); err != nil {
		stop()
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
		stop()
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

// unmountWait bounds each wait of Unmount: for the kernel to let go of
// the view once unmounted, then for the server to end once its
// connection was aborted.
const unmountWait = 5 * time.Second

// Unmount takes the view away and waits for its server to stop, within
// bounds whatever still holds the view, so the daemon never hangs on its
// way out and leaves no mount behind. Fetches for reads in flight end at
// once (those reads, and any that follow, fail with EIO); a busy view is
// detached. Unmounting ends the FUSE connection only with the last mount
// of the view: another one (a disk image bound elsewhere and held open,
// or a copy in a mount namespace made while the view was mounted, by
// `ip netns exec`, unshare or a container runtime) would keep the server
// waiting for requests forever. So if the server has not ended after
// unmountWait the connection is aborted: what is left of the view then
// fails with ENOTCONN.
func (v *View) Unmount() error {
	var st syscall.Stat_t
	statErr := syscall.Stat(v.dir, &st)
	v.stop()
	// Not v.server.Unmount: after unmounting it waits for the server
	// without a bound.
	if err := syscall.Unmount(v.dir, 0); err != nil {
		if err2 := syscall.Unmount(v.dir, syscall.MNT_DETACH); err2 != nil {
			return fmt.Errorf("unmount fuse view %s: %w", v.dir, err)
		}
	}
	done := make(chan struct{})
	go func() { v.server.Wait(); close(done) }()
	if !within(done, unmountWait) {
		if statErr != nil {
			return fmt.Errorf("unmount fuse view %s: still served %v after unmounting, and its connection is unknown: %w", v.dir, unmountWait, statErr)
		}
		if err := abortConn(filepath.Dir(v.dir), unix.Minor(st.Dev)); err != nil {
			return fmt.Errorf("unmount fuse view %s: still served %v after unmounting (mounted elsewhere too?), and abort failed: %w", v.dir, unmountWait, err)
		}
		v.cfg.Log.Warn("fuse view: aborted its connection: still mounted elsewhere after unmounting", "dir", v.dir)
		if !within(done, unmountWait) {
			// A request still running: leave the disks and readers it may use.
			return fmt.Errorf("unmount fuse view %s: a request still running %v after its connection was aborted", v.dir, unmountWait)
		}
	}
	v.closeDisks() // no request can reach them now
	v.readers.stop()
	return nil
}

// within reports whether done is closed within d.
func within(done <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

// abortConn aborts FUSE connection conn (the view's device minor): the
// server's reads of /dev/fuse end, and every request fails with ENOTCONN.
// Through the FUSE control file system; where the host has not mounted it
// at /sys/fs/fuse/connections it is mounted for the purpose in a scratch
// directory under dir.
func abortConn(dir string, conn uint32) error {
	name := filepath.Join(strconv.FormatUint(uint64(conn), 10), "abort")
	err := os.WriteFile(filepath.Join("/sys/fs/fuse/connections", name), []byte("1"), 0o200)
	if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	tmp, err := os.MkdirTemp(dir, ".fusectl-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := syscall.Mount("fusectl", tmp, "fusectl", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount the fuse control file system: %w", err)
	}
	defer syscall.Unmount(tmp, syscall.MNT_DETACH)
	return os.WriteFile(filepath.Join(tmp, name), []byte("1"), 0o200)
}

// stopping ends a fetch when the view goes away, whatever its deadline.
type stopping struct {
	Fetcher
	life context.Context
}

// errUnmounted: the view went away while a read waited for a chunk.
var errUnmounted = errors.New("the fuse view was unmounted")

func (s stopping) FetchChunk(ctx context.Context, id cid.Cid) ([]byte, error) {
	if s.life.Err() != nil {
		return nil, errUnmounted
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer context.AfterFunc(s.life, func() { cancel(errUnmounted) })()
	b, err := s.Fetcher.FetchChunk(ctx, id)
	if err != nil && context.Cause(ctx) == errUnmounted {
		return nil, fmt.Errorf("%w: %w", errUnmounted, err)
	}
	return b, err
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
