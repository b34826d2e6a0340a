// Package tree turns a file or directory tree into a layer (chunks in a
// store plus a manifest) and writes a layer back out as files. It works on
// the local file system and a chunk.Store only: no network, no daemon.
package tree

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/ipfs/go-cid"

	"golang.org/x/sys/unix"

	"github.com/p2pimg/p2pimg/chunk"
)

// Skipped is a path left out of a layer, and why.
type Skipped struct {
	Path   string `json:"path"`
	Reason string `json:"reason"`
}

// AddResult describes a layer built by Add.
type AddResult struct {
	CID       cid.Cid
	Manifest  *chunk.Manifest
	Encoded   []byte
	NewChunks int   // chunks that were not in the store before
	NewBytes  int64 // their bytes
	Skipped   []Skipped
}

// Progress reports bytes done of a total.
type Progress func(done, total int64)

// As runs fn, whose file system calls must carry someone's rights (a
// local API caller's, for example); nil runs fn directly. Add and
// Checkout make every path-based call (open, stat, readdir, mkdir,
// chmod, ...) through it, and read and write the descriptors it opened
// outside it.
type As func(fn func() error) error

func (as As) do(fn func() error) error {
	if as == nil {
		return fn()
	}
	return as(fn)
}

// AddOptions adjust AddWith.
type AddOptions struct {
	Progress Progress
	// Parent and Upper: root is an overlayfs upper directory of changes
	// over the layer Parent (see AddUpper).
	Parent cid.Cid
	Upper  bool
	// As makes the file system calls (see As).
	As As
}

// DefaultParams picks chunking for an input: fixed 64 KiB blocks for a single
// raw disk image (.img, .raw), which changes in place; content-defined
// chunking for everything else.
func DefaultParams(path string, isFile bool) chunk.Params {
	ext := strings.ToLower(filepath.Ext(path))
	if isFile && (ext == ".img" || ext == ".raw") {
		p, _ := chunk.NewParams(chunk.Fixed, 64<<10, chunk.SHA256)
		return p
	}
	return chunk.DefaultParams()
}

// batchBytes is how much chunk data Add gathers before one store write.
const batchBytes = 8 << 20

// scanned is what Add puts in a layer: the entries without chunks, sorted,
// what it skips, and where each file's bytes are read from.
type scanned struct {
	entries []chunk.Entry
	skipped []Skipped
	// dir is the root directory (nil when the root is a single file, read
	// by its path); names are the entries' names in it ("" for a marker,
	// which has no bytes).
	dir   *os.Root
	file  string
	names []string
}

// open opens entry i's file for reading.
func (s *scanned) open(i int) (*os.File, error) {
	if s.dir == nil {
		return OpenRegular(s.file)
	}
	return OpenRegularIn(s.dir, s.names[i])
}

// close releases the root directory.
func (s *scanned) close() {
	if s.dir != nil {
		s.dir.Close()
	}
}

// scan lists root for Add. A root that is a regular file gives a one-entry
// layer named after the file. A directory is walked through an os.Root,
// so nothing swapped in while it is read can lead outside it. With upper,
// root is an overlayfs upper directory: a whiteout (a character device
// 0/0) becomes an empty .wh.NAME entry and an opaque directory (xattr
// trusted.overlay.opaque=y) gets a .wh..wh..opq entry, the OCI forms.
func scan(root string, upper bool) (*scanned, error) {
	fi, err := os.Lstat(root)
	if err != nil {
		return nil, fmt.Errorf("add %s: %w", root, err)
	}
	switch {
	case fi.Mode().IsRegular():
		return &scanned{entries: []chunk.Entry{entryFor(filepath.Base(root), fi)}, file: root, names: []string{root}}, nil
	case !fi.IsDir():
		return nil, fmt.Errorf("add %s: not a regular file or directory (%s)", root, fi.Mode().Type())
	}
	dir, err := os.OpenRoot(root)
	if err != nil {
		return nil, fmt.Errorf("add %s: %w", root, err)
	}
	w := walker{dir: dir, root: root, upper: upper}
	if err := fs.WalkDir(dir.FS(), ".", w.visit); err != nil {
		dir.Close()
		return nil, err
	}
	return w.sorted(), nil
}

// walker gathers a directory's entries for scan.
type walker struct {
	dir     *os.Root
	root    string // for messages
	upper   bool
	items   []item
	skipped []Skipped
}

type item struct {
	e    chunk.Entry
	name string    // in the root; "" for a marker
	ino  [2]uint64 // device and inode of a file with hard links
}

func (w *walker) visit(rel string, d fs.DirEntry, err error) error {
	if err != nil {
		return fmt.Errorf("add %s: %w", filepath.Join(w.root, rel), err)
	}
	if rel == "." {
		return nil
	}
	fi, err := d.Info()
	if err != nil {
		return fmt.Errorf("add %s: %w", filepath.Join(w.root, rel), err)
	}
	if err := chunk.CheckPath(rel); err != nil {
		w.skipped = append(w.skipped, Skipped{rel, err.Error()})
		if fi.IsDir() {
			return filepath.SkipDir
		}
		return nil
	}
	marker := func(rel string) item {
		e := entryFor(rel, fi)
		e.Type, e.Size, e.Mode, e.Target = chunk.File, 0, 0o644, ""
		return item{e: e}
	}
	switch t := fi.Mode().Type(); {
	case w.upper && t&fs.ModeCharDevice != 0 && fi.Sys().(*syscall.Stat_t).Rdev == 0:
		w.items = append(w.items, marker(path.Join(path.Dir(rel), chunk.WhiteoutPrefix+path.Base(rel))))
	case w.upper && t == fs.ModeDir && isOpaque(w.dir, rel):
		w.items = append(w.items, item{e: entryFor(rel, fi), name: rel}, marker(path.Join(rel, chunk.OpaqueMarker)))
	case t == 0, t == fs.ModeDir, t == fs.ModeSymlink:
		it, err := w.item(rel, fi)
		if err != nil {
			return fmt.Errorf("add %s: %w", filepath.Join(w.root, rel), err)
		}
		w.items = append(w.items, it)
	default:
		w.skipped = append(w.skipped, Skipped{rel, "a " + TypeName(t) + " is not stored in layers"})
	}
	return nil
}

// item is the entry of a file, directory or symlink, with its target and
// attributes; a file that cannot be read fails now, before any chunk is
// written.
func (w *walker) item(rel string, fi fs.FileInfo) (item, error) {
	e := entryFor(rel, fi)
	var err error
	switch fi.Mode().Type() {
	case 0: // the attributes from the file opened: one lookup
		var f *os.File
		if f, err = openRegularSeen(w.dir, rel, fi); err == nil {
			e.Xattrs, err = fileXattrs(f, rel)
			f.Close()
		}
		return item{e, rel, linkedInode(fi)}, err
	case fs.ModeSymlink:
		if e.Target, err = w.dir.Readlink(rel); err != nil {
			return item{}, err
		}
	}
	if e.Xattrs, err = readXattrs(w.dir, rel); err != nil {
		return item{}, err
	}
	return item{e, rel, linkedInode(fi)}, nil
}

// sorted is what the walk found, in path order, with hard links marked.
func (w *walker) sorted() *scanned {
	slices.SortFunc(w.items, func(a, b item) int { return strings.Compare(a.e.Path, b.e.Path) })
	s := &scanned{skipped: w.skipped, dir: w.dir}
	inodes := make([][2]uint64, len(w.items))
	for i, it := range w.items {
		s.entries = append(s.entries, it.e)
		s.names = append(s.names, it.name)
		inodes[i] = it.ino
	}
	linkInodes(s.entries, inodes)
	return s
}

func isOpaque(root *os.Root, name string) bool {
	buf := make([]byte, 8)
	n := 0
	err := onInode(root, name, func(p string) (err error) {
		n, err = unix.Getxattr(p, "trusted.overlay.opaque", buf)
		return err
	})
	return err == nil && n == 1 && buf[0] == 'y'
}

// TypeName names a file type for messages ("fifo", "symlink", ...).
func TypeName(t fs.FileMode) string {
	switch {
	case t&fs.ModeDevice != 0:
		return "device"
	case t&fs.ModeNamedPipe != 0:
		return "fifo"
	case t&fs.ModeSocket != 0:
		return "socket"
	case t&fs.ModeDir != 0:
		return "directory"
	case t&fs.ModeSymlink != 0:
		return "symlink"
	}
	return "special file"
}

func entryFor(rel string, fi fs.FileInfo) chunk.Entry {
	e := chunk.Entry{Path: rel, Mode: fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky), MTime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		e.UID, e.GID = st.Uid, st.Gid
	}
	switch {
	case fi.IsDir():
		e.Type = chunk.Dir
	case fi.Mode()&fs.ModeSymlink != 0:
		e.Type, e.Mode = chunk.Symlink, 0o777
	default:
		e.Type, e.Size = chunk.File, fi.Size()
	}
	return e
}

// Add chunks root (a file or a directory) under p, stores the chunks that
// the store lacks, and returns the layer's manifest. It writes no manifest or
// layer record: the caller does, after the chunks are in place. The chunks it
// writes are not synced (chunk.Catalog.PutLayer does that).
func Add(ctx context.Context, store chunk.Store, root string, p chunk.Params, progress Progress) (*AddResult, error) {
	return AddWith(ctx, store, root, p, AddOptions{Progress: progress})
}

// AddUpper is Add for an overlayfs upper directory (or any directory of
// changes with OCI whiteouts) stacked on the layer parent: whiteout devices
// and opaque directories become OCI whiteout entries.
func AddUpper(ctx context.Context, store chunk.Store, root string, p chunk.Params, parent cid.Cid, progress Progress) (*AddResult, error) {
	return AddWith(ctx, store, root, p, AddOptions{Progress: progress, Parent: parent, Upper: true})
}

// AddWith is Add (or AddUpper) with options.
func AddWith(ctx context.Context, store chunk.Store, root string, p chunk.Params, o AddOptions) (*AddResult, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	var sc *scanned
	err := o.As.do(func() (err error) {
		sc, err = scan(root, o.Upper)
		return err
	})
	if err != nil {
		return nil, err
	}
	defer sc.close()
	a := newAdder(ctx, store, p, o.Progress, sc.entries)
	byPath := map[string]*chunk.Entry{}
	for i := range sc.entries {
		e := &sc.entries[i]
		if e.Type != chunk.File || sc.names[i] == "" {
			continue
		}
		byPath[e.Path] = e
		if t := byPath[e.Link]; t != nil { // a hard link: the target's chunks, read once
			e.Chunks, e.Size = slices.Clone(t.Chunks), t.Size
			a.done += e.Size
			continue
		}
		var f *os.File
		if err := o.As.do(func() (err error) { f, err = sc.open(i); return err }); err != nil {
			return nil, fmt.Errorf("add %s: %w", e.Path, err)
		}
		err := a.file(f, e)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("add %s: %w", e.Path, err)
		}
	}
	if err := a.flush(); err != nil {
		return nil, err
	}
	res := &AddResult{Skipped: sc.skipped, NewChunks: a.newChunks, NewBytes: a.newBytes}
	m := &chunk.Manifest{Params: p, Parent: o.Parent, Entries: sc.entries}
	if res.Encoded, res.CID, err = m.Encode(); err != nil {
		return nil, err
	}
	res.Manifest = m
	return res, nil
}

// adder chunks the files of one Add and stores the chunks the store
// lacks, in batches.
type adder struct {
	ctx         context.Context
	store       chunk.Store
	p           chunk.Params
	progress    Progress
	done, total int64
	seen        map[cid.Cid]bool
	batch       []chunk.Block
	arena       []byte // the batch's bytes (Split reuses its buffers)
	newChunks   int
	newBytes    int64
}

func newAdder(ctx context.Context, store chunk.Store, p chunk.Params, progress Progress, entries []chunk.Entry) *adder {
	var total int64
	for _, e := range entries {
		total += e.Size
	}
	// Sized for what there is to add (a file that grew since it was
	// listed only makes the arena grow).
	arena := make([]byte, 0, min(total, batchBytes)+int64(p.MaxSize()))
	return &adder{ctx: ctx, store: store, p: p, progress: progress, total: total, seen: map[cid.Cid]bool{}, arena: arena}
}

// file chunks f into e's chunks; e's size becomes the bytes actually read
// (the file may have changed since it was listed).
func (a *adder) file(f *os.File, e *chunk.Entry) error {
	var size int64
	err := chunk.Split(a.ctx, f, a.p, func(c chunk.Chunk) error {
		n := len(c.Data())
		e.Chunks = append(e.Chunks, chunk.Ref{CID: c.CID(), Size: uint32(n)})
		size += int64(n)
		a.done += int64(n)
		if a.progress != nil {
			a.progress(a.done, a.total)
		}
		return a.keep(c)
	})
	e.Size = size
	return err
}

// keep queues c for the store unless this add met it already or the store
// has it; a full batch is written.
func (a *adder) keep(c chunk.Chunk) error {
	if a.seen[c.CID()] {
		return nil
	}
	a.seen[c.CID()] = true
	if ok, err := a.store.Has(a.ctx, c.CID()); err != nil || ok {
		return err
	}
	// Split reuses c's buffer: keep a copy until the batch is written.
	// The arena never grows past its capacity: batches flush first.
	var b chunk.Block
	a.arena, b = c.AppendTo(a.arena)
	a.batch = append(a.batch, b)
	a.newChunks++
	a.newBytes += int64(len(c.Data()))
	if len(a.arena) >= batchBytes {
		return a.flush()
	}
	return nil
}

// flush writes the batch.
func (a *adder) flush() error {
	if len(a.batch) == 0 {
		return nil
	}
	if err := a.store.Put(a.ctx, a.batch...); err != nil {
		return err
	}
	a.batch, a.arena = a.batch[:0], a.arena[:0]
	return nil
}

// ErrNotRegular: a path that should be a regular file is something else
// (a symlink, a fifo, a device, a directory).
var ErrNotRegular = errors.New("not a regular file")

// OpenRegular opens a regular file for reading without following a
// symlink in its last component and without blocking: a fifo or device
// put where a file was expected is refused before a read can hang.
func OpenRegular(p string) (*os.File, error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ELOOP) {
		return nil, fmt.Errorf("%s: a symlink: %w", p, ErrNotRegular)
	}
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	return regular(fd, p)
}

// OpenRegularIn opens name under root for reading. The last component
// must be a regular file, not a symlink (even one that stays inside
// root): it is looked at without following, opened without blocking (a
// fifo cannot hang the open), and the opened file must be that same
// regular file.
func OpenRegularIn(root *os.Root, name string) (*os.File, error) {
	li, err := root.Lstat(name)
	if err != nil {
		return nil, err
	}
	return openRegularSeen(root, name, li)
}

// openRegularSeen is OpenRegularIn for a name already looked at (li, from
// an lstat): only a regular file is opened, and only the one seen.
func openRegularSeen(root *os.Root, name string, li fs.FileInfo) (*os.File, error) {
	if !li.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is a %s: %w", name, TypeName(li.Mode().Type()), ErrNotRegular)
	}
	f, err := root.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && (!fi.Mode().IsRegular() || !os.SameFile(li, fi)) {
		err = fmt.Errorf("%s was replaced while it was opened: %w", name, ErrNotRegular)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// regular checks that the open fd is a regular file, makes reads blocking
// again (they never block on a regular file anyway) and wraps it.
func regular(fd int, p string) (*os.File, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "fstat", Path: p, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: %s: %w", p, TypeName(modeType(st.Mode)), ErrNotRegular)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "fcntl", Path: p, Err: err}
	}
	return os.NewFile(uintptr(fd), p), nil
}

// modeType is the fs.FileMode type bits of a stat mode.
func modeType(m uint32) fs.FileMode {
	switch m & unix.S_IFMT {
	case unix.S_IFDIR:
		return fs.ModeDir
	case unix.S_IFLNK:
		return fs.ModeSymlink
	case unix.S_IFIFO:
		return fs.ModeNamedPipe
	case unix.S_IFSOCK:
		return fs.ModeSocket
	case unix.S_IFCHR:
		return fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFBLK:
		return fs.ModeDevice
	}
	return 0
}
