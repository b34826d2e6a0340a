// Package fuseview serves a layer (a flattened stack) as a read-only FUSE
// file system straight from the chunk store: one copy of the bytes on the
// host, nothing checked out. Directories, files, symlinks, modes, owners
// and times come from the manifest; all-zero chunks read as zeros without
// touching the store and are reported as holes (SEEK_HOLE); the content is
// immutable, so the kernel may cache entries, attributes and pages for as
// long as the view is mounted. A chunk missing from the store is asked of
// an optional Fetcher (the lazy-activation hook) and is never served
// unverified. It never talks to the network itself and never decides
// what is mounted where (package expose does).
package fuseview

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/ipfs/go-cid"
	"golang.org/x/sync/singleflight"
	"golang.org/x/sys/unix"

	"github.com/p2pimg/p2pimg/chunk"
)

// Chunks is where the view reads chunk data.
type Chunks interface {
	// GetInto returns the chunk's data (in buf's storage when it fits),
	// an error wrapping chunk.ErrNotFound when absent, or chunk.ErrCorrupt
	// for bytes damaged on disk. Chunks in the store were verified when
	// stored and are CRC-checked when read.
	GetInto(ctx context.Context, id cid.Cid, buf []byte) ([]byte, error)
}

// Fetcher fetches one missing chunk at once (ahead of any background
// fetch), verifies it against its id and returns its bytes (storing them,
// maybe just after it returns).
// It must return within the context's deadline; an error means no peer
// supplied a verified copy. Safe for concurrent use.
type Fetcher interface {
	FetchChunk(ctx context.Context, id cid.Cid) ([]byte, error)
}

// Config configures a view.
type Config struct {
	Store Chunks
	// Fetch, if set, is asked for chunks missing from Store; without it
	// a read of a missing chunk fails with EIO.
	Fetch Fetcher
	// FetchTimeout bounds one on-demand fetch (default 10 s): after it the
	// read fails with EIO, it never hangs.
	FetchTimeout time.Duration
	// OnReadError, if set, is told of every chunk a read could not get
	// (for the host's state detail).
	OnReadError func(id cid.Cid, err error)
	// OnChunk, if set, is told of every chunk a read asks for (repeats
	// included), in order: an access trace. It must be quick.
	OnChunk func(id cid.Cid)
	// DeltaDir, if set, makes the layer's disk images writable: writes to
	// them go to a block-level delta per file kept under DeltaDir, and
	// reads merge it over the layer. Without it the view is read-only.
	DeltaDir string
	// DiskMin: files of at least this many bytes are disk images (default
	// 64 MiB); a layer's only file always is.
	DiskMin int64
	// Base names what the deltas apply to (the manifest id): a delta kept
	// for another base is discarded.
	Base string
	// Name is the file system's source name in the mount table.
	Name string
	Log  *slog.Logger
}

// View is one mounted layer.
type View struct {
	dir    string
	server *fuse.Server
	cfg    Config
	hash   uint64

	zmu     sync.Mutex
	zeroIDs map[uint32]cid.Cid
	cache   *lru.Cache[cid.Cid, []byte] // recently read chunks: a chunk straddling two reads is read once
	flight  singleflight.Group          // concurrent reads of one chunk get it once

	statsMu sync.Mutex
	stats   Stats

	disks   map[string]*diskNode // writable disk images, by path
	readers *readers
}

// Stats counts what reads through a view did.
type Stats struct {
	StoreReads   int64 // chunks read from the store
	Fetched      int64 // chunks fetched on demand
	FetchedBytes int64
	ReadErrors   int64 // reads that failed with EIO
}

const defaultDiskMin = 64 << 20

// cacheTTL: how long the kernel may keep entries and attributes. The
// view never changes while mounted, so this is only a bound on memory.
const cacheTTL = time.Hour

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
// max_pages say (ext4: mostly 2 MiB), which bounds warm reads; passthrough
// cannot serve from packs (no offset mapping, headers between chunks, and
// it would skip the CRC-32C check of every pack read).

// readAhead is the kernel read-ahead a view asks for. The kernel caps a
// FUSE mount's read-ahead, and so the size of the reads it sends, at its
// backing device's read_ahead_kb (128 KiB), whatever the server asked for
// at init: a sequential read then costs a round trip to the daemon per
// 128 KiB, with one or two in flight. With more, each read is 1 MiB
// (MaxWrite bounds it) and several are in flight, so the chunks of each
// are read from the packs side by side.
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

// Stats returns the view's counters.
func (v *View) Stats() Stats {
	v.statsMu.Lock()
	defer v.statsMu.Unlock()
	return v.stats
}

func (v *View) count(f func(*Stats)) {
	v.statsMu.Lock()
	f(&v.stats)
	v.statsMu.Unlock()
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

type dirNode struct {
	fusefs.Inode
	e     *chunk.Entry
	nlink uint32
}

var _ fusefs.NodeGetattrer = (*dirNode)(nil)

func (d *dirNode) Getattr(ctx context.Context, f fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	fill(&out.Attr, d.e, syscall.S_IFDIR)
	out.Nlink = d.nlink
	out.Size = 4096
	out.SetTimeout(cacheTTL)
	return 0
}

type linkNode struct {
	fusefs.Inode
	e *chunk.Entry
}

var (
	_ fusefs.NodeGetattrer  = (*linkNode)(nil)
	_ fusefs.NodeReadlinker = (*linkNode)(nil)
)

func (l *linkNode) Getattr(ctx context.Context, f fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	fill(&out.Attr, l.e, syscall.S_IFLNK)
	out.Nlink = 1
	out.Size = uint64(len(l.e.Target))
	out.SetTimeout(cacheTTL)
	return 0
}

func (l *linkNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	return []byte(l.e.Target), 0
}

type fileNode struct {
	fusefs.Inode
	v    *View
	e    *chunk.Entry
	offs []int64 // offs[i]: where chunk i starts; offs[len] = size
	zero []bool  // chunk i is all zeros
	data int64   // bytes in non-zero chunks

	links uint32 // names besides its own (hard links), set while building
}

func (f *fileNode) addLink() { f.links++ }

var (
	_ fusefs.NodeGetattrer = (*fileNode)(nil)
	_ fusefs.NodeOpener    = (*fileNode)(nil)
	_ fusefs.NodeReader    = (*fileNode)(nil)
	_ fusefs.NodeLseeker   = (*fileNode)(nil)
)

func newFileNode(v *View, e *chunk.Entry) *fileNode {
	f := &fileNode{v: v, e: e, offs: make([]int64, len(e.Chunks)+1), zero: make([]bool, len(e.Chunks))}
	var off int64
	for i, ref := range e.Chunks {
		f.offs[i] = off
		f.zero[i] = v.isZero(ref)
		if !f.zero[i] {
			f.data += int64(ref.Size)
		}
		off += int64(ref.Size)
	}
	f.offs[len(e.Chunks)] = off
	return f
}

// isZero reports whether ref names an all-zero chunk, without reading it.
func (v *View) isZero(ref chunk.Ref) bool {
	v.zmu.Lock()
	defer v.zmu.Unlock()
	id, ok := v.zeroIDs[ref.Size]
	if !ok {
		id, _ = chunk.SumCID(make([]byte, ref.Size), v.hash)
		v.zeroIDs[ref.Size] = id
	}
	return id.Equals(ref.CID)
}

func (f *fileNode) size() int64 { return f.offs[len(f.offs)-1] }

func (f *fileNode) Getattr(ctx context.Context, fh fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	fill(&out.Attr, f.e, syscall.S_IFREG)
	out.Nlink = 1 + f.links
	out.Size = uint64(f.size())
	out.Blocks = uint64((f.data + 511) / 512)
	out.SetTimeout(cacheTTL)
	return 0
}

// Open keeps the kernel's page cache across opens: the content never changes.
func (f *fileNode) Open(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0 {
		return nil, 0, syscall.EROFS
	}
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

// chunkAt is the index of the chunk holding byte off (off < size).
func (f *fileNode) chunkAt(off int64) int {
	return sort.Search(len(f.e.Chunks), func(i int) bool { return f.offs[i+1] > off })
}

func (f *fileNode) Read(ctx context.Context, fh fusefs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	end := min(off+int64(len(dest)), f.size())
	if off >= end {
		return fuse.ReadResultData(nil), 0
	}
	if err := f.readBase(ctx, dest[:end-off], off, end); err != nil {
		return nil, syscall.EIO
	}
	return fuse.ReadResultData(dest[:end-off]), 0
}

// readBase fills dest with the layer's bytes at off; those at or past
// limit (or the file's end) read as zeros. A chunk the read covers whole
// is read from the store straight into dest (no buffer, no second copy);
// several such chunks are read side by side, so a cold read keeps the
// disk busy and a lazy view fetches them from peers in parallel.
func (f *fileNode) readBase(ctx context.Context, dest []byte, off, limit int64) error {
	end := min(off+int64(len(dest)), f.size(), limit)
	if off >= end {
		clear(dest)
		return nil
	}
	clear(dest[end-off:])
	first, last := f.chunkAt(off), f.chunkAt(end-1)
	if first == last {
		return f.readChunk(ctx, dest, off, end, first)
	}
	errs := make([]error, last-first+1)
	var wg sync.WaitGroup
	for i := first; i <= last; i++ {
		read := func() { errs[i-first] = f.readChunk(ctx, dest, off, end, i) }
		if f.zero[i] || i == last {
			read()
			continue
		}
		wg.Add(1)
		if !f.v.readers.try(func() { read(); wg.Done() }) {
			read()
			wg.Done()
		}
	}
	wg.Wait()
	return errors.Join(errs...)
}

// readChunk fills the part of dest (which holds [off, end) of the file)
// that chunk i covers.
func (f *fileNode) readChunk(ctx context.Context, dest []byte, off, end int64, i int) error {
	from, to := max(off, f.offs[i]), min(end, f.offs[i+1])
	out := dest[from-off : to-off : to-off]
	if f.zero[i] {
		clear(out)
		return nil
	}
	ref := f.e.Chunks[i]
	var err error
	if from == f.offs[i] && to == f.offs[i+1] {
		err = f.v.chunkInto(ctx, ref, out)
	} else {
		var data []byte
		if data, err = f.v.chunk(ctx, ref); err == nil {
			copy(out, data[from-f.offs[i]:to-f.offs[i]])
		}
	}
	if err != nil {
		f.v.count(func(s *Stats) { s.ReadErrors++ })
		f.v.cfg.Log.Warn("fuse view: read failed", "path", f.e.Path, "offset", from, "err", err)
	}
	return err
}

// chunkInto reads a whole chunk into out (len(out) == ref.Size): from the
// cache, straight from the store into out, or (missing) through the
// fetcher, once however many reads ask for it.
func (v *View) chunkInto(ctx context.Context, ref chunk.Ref, out []byte) error {
	v.trace(ref)
	if b, ok := v.cache.Peek(ref.CID); ok {
		copy(out, b)
		return nil
	}
	b, err := v.cfg.Store.GetInto(ctx, ref.CID, out)
	switch {
	case errors.Is(err, chunk.ErrNotFound):
		if b, err = v.cached(ctx, ref); err == nil {
			copy(out, b)
		}
		return err // cached told OnReadError
	case err != nil:
	case len(b) != len(out):
		err = fmt.Errorf("%d bytes, the manifest says %d", len(b), ref.Size)
	default:
		v.count(func(s *Stats) { s.StoreReads++ })
		if len(b) > 0 && &b[0] != &out[0] {
			copy(out, b)
		}
		return nil
	}
	if v.cfg.OnReadError != nil {
		v.cfg.OnReadError(ref.CID, err)
	}
	return fmt.Errorf("chunk %s: %w", ref.CID, err)
}

// chunk returns a chunk's bytes: from the cache, the store, or (missing)
// the fetcher, which verifies before it returns.
func (v *View) chunk(ctx context.Context, ref chunk.Ref) ([]byte, error) {
	v.trace(ref)
	return v.cached(ctx, ref)
}

func (v *View) trace(ref chunk.Ref) {
	if v.cfg.OnChunk != nil {
		v.cfg.OnChunk(ref.CID)
	}
}

// cached is chunk without the trace: concurrent asks for one chunk load
// it once, and what was loaded stays in a small cache (a chunk straddling
// two reads is read once).
func (v *View) cached(ctx context.Context, ref chunk.Ref) ([]byte, error) {
	if b, ok := v.cache.Get(ref.CID); ok {
		return b, nil
	}
	b, err, _ := v.flight.Do(ref.CID.KeyString(), func() (any, error) { return v.load(ctx, ref) })
	if err != nil {
		return nil, err
	}
	return b.([]byte), nil
}

// load reads one chunk from the store, or fetches it when missing.
func (v *View) load(ctx context.Context, ref chunk.Ref) ([]byte, error) {
	b, err := v.cfg.Store.GetInto(ctx, ref.CID, nil)
	if err == nil {
		v.count(func(s *Stats) { s.StoreReads++ })
	}
	if errors.Is(err, chunk.ErrNotFound) && v.cfg.Fetch != nil {
		fctx, cancel := context.WithTimeout(ctx, v.cfg.FetchTimeout)
		b, err = v.cfg.Fetch.FetchChunk(fctx, ref.CID)
		cancel()
		if err == nil {
			v.count(func(s *Stats) { s.Fetched++; s.FetchedBytes += int64(len(b)) })
		}
	}
	if err == nil && len(b) != int(ref.Size) {
		err = fmt.Errorf("chunk %s: %d bytes, the manifest says %d", ref.CID, len(b), ref.Size)
	}
	if err != nil {
		if v.cfg.OnReadError != nil {
			v.cfg.OnReadError(ref.CID, err)
		}
		return nil, fmt.Errorf("chunk %s: %w", ref.CID, err)
	}
	v.cache.Add(ref.CID, b)
	return b, nil
}

// Lseek answers SEEK_DATA and SEEK_HOLE from the zero chunks.
func (f *fileNode) Lseek(ctx context.Context, fh fusefs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	const seekData, seekHole = 3, 4
	size := f.size()
	if int64(off) >= size {
		return 0, syscall.ENXIO
	}
	wantZero := whence == seekHole
	if whence != seekData && whence != seekHole {
		return 0, syscall.EINVAL
	}
	for i := f.chunkAt(int64(off)); i < len(f.e.Chunks); i++ {
		if f.zero[i] == wantZero {
			return uint64(max(f.offs[i], int64(off))), 0
		}
	}
	if wantZero {
		return uint64(size), 0 // the virtual hole at the end
	}
	return 0, syscall.ENXIO
}
