package tree

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/p2pimg/p2pimg/chunk"
)

// ErrNotEmpty: a checkout into a directory that already has files, without force.
var ErrNotEmpty = errors.New("directory is not empty")

// CheckoutOptions adjust Checkout.
type CheckoutOptions struct {
	// Force allows a non-empty directory: entries of the layer replace what
	// is at their paths; other files are left alone.
	Force bool
	// Owners applies the recorded uid and gid (needs root).
	Owners bool
	// Progress, if set, is called with bytes written.
	Progress Progress
	// As makes the file system calls (see As): what it cannot create or
	// change, the checkout refuses.
	As As
}

// Checkout writes the layer m into dir (created if absent) so that every
// file is byte-identical, with its mode, times, symlinks and, where the
// source was zero, holes. Every chunk read from the store is verified first.
// Writes go through an os.Root, so no entry can land outside dir whatever
// the manifest says or the directory holds.
func Checkout(ctx context.Context, store chunk.Store, m *chunk.Manifest, dir string, o CheckoutOptions) error {
	if err := m.Validate(); err != nil {
		return err
	}
	var root *os.Root
	if err := o.As.do(func() (err error) { root, err = openTarget(dir, o.Force); return err }); err != nil {
		return err
	}
	defer root.Close()

	total := m.Size()
	var done int64
	w := writer{ctx: ctx, store: store, root: root, as: o.As, zeroIDs: map[uint32]cid.Cid{}, hash: m.Params.Hash}
	// Directories and files first, symlinks last: the manifest guarantees that
	// no entry lives under a symlink, and os.Root refuses escapes anyway.
	for _, pass := range []chunk.EntryType{chunk.Dir, chunk.File, chunk.Symlink} {
		for i := range m.Entries {
			e := &m.Entries[i]
			if e.Type != pass {
				continue
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := w.entry(e, o.Force, func(n int64) {
				done += n
				if o.Progress != nil {
					o.Progress(done, total)
				}
			}); err != nil {
				return fmt.Errorf("checkout %s: %w", e.Path, err)
			}
			if err := o.As.do(func() error { return setOwnerMode(root, e, o.Owners) }); err != nil {
				return fmt.Errorf("checkout %s: %w", e.Path, err)
			}
			// and file capabilities too: the attributes come last
			if err := o.As.do(func() error { return setXattrs(root, e, o.Owners) }); err != nil {
				return fmt.Errorf("checkout %s: %w", e.Path, err)
			}
		}
	}
	// Directory times last, deepest first: writing into a directory moves its mtime.
	for i := len(m.Entries) - 1; i >= 0; i-- {
		e := &m.Entries[i]
		if e.Type == chunk.Symlink {
			continue
		}
		t := time.Unix(0, e.MTime)
		if err := o.As.do(func() error { return root.Chtimes(e.Path, t, t) }); err != nil {
			return fmt.Errorf("checkout %s: %w", e.Path, err)
		}
	}
	return nil
}

// openTarget creates dir if needed, refuses a non-empty one without
// force, and opens it as the root of every write.
func openTarget(dir string, force bool) (*os.Root, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("checkout into %s: %w", dir, err)
	}
	if !force {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("checkout into %s: %w", dir, err)
		}
		if len(ents) > 0 {
			return nil, fmt.Errorf("checkout into %s: %w (it has %d entries; use --force to write over them)", dir, ErrNotEmpty, len(ents))
		}
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("checkout into %s: %w", dir, err)
	}
	return root, nil
}

// setOwnerMode gives an entry its recorded owner (with owners) and mode.
func setOwnerMode(root *os.Root, e *chunk.Entry, owners bool) error {
	if owners {
		if err := root.Lchown(e.Path, int(e.UID), int(e.GID)); err != nil {
			return err
		}
	}
	if e.Type == chunk.Symlink {
		return nil
	}
	// chown clears setuid/setgid, so the mode comes after it.
	return root.Chmod(e.Path, e.Mode)
}

type writer struct {
	ctx     context.Context
	store   chunk.Store
	root    *os.Root
	as      As
	hash    uint64
	zeroIDs map[uint32]cid.Cid
}

// isZero reports whether ref names an all-zero chunk, without reading it.
func (w *writer) isZero(ref chunk.Ref) bool {
	id, ok := w.zeroIDs[ref.Size]
	if !ok {
		id, _ = chunk.SumCID(make([]byte, ref.Size), w.hash)
		w.zeroIDs[ref.Size] = id
	}
	return id.Equals(ref.CID)
}

// clear removes whatever is at p unless it is a directory and want is one.
func (w *writer) clear(p string, want chunk.EntryType) error {
	fi, err := w.root.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() && want == chunk.Dir {
		return nil
	}
	return w.root.RemoveAll(p)
}

// create makes e's directory or symlink, or creates its file (returned
// open for writing).
func (w *writer) create(e *chunk.Entry, force bool) (*os.File, error) {
	if force {
		if err := w.clear(e.Path, e.Type); err != nil {
			return nil, err
		}
	}
	switch e.Type {
	case chunk.Dir:
		err := w.root.Mkdir(e.Path, 0o700)
		if errors.Is(err, fs.ErrExist) && force {
			return nil, nil
		}
		return nil, err
	case chunk.Symlink:
		return nil, w.root.Symlink(e.Target, e.Path)
	}
	if e.Link != "" { // written before it: the manifest puts targets first
		return nil, w.root.Link(e.Link, e.Path)
	}
	return w.root.OpenFile(e.Path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
}

func (w *writer) entry(e *chunk.Entry, force bool, progress func(int64)) error {
	var f *os.File
	if err := w.as.do(func() (err error) { f, err = w.create(e, force); return err }); err != nil || f == nil {
		if err == nil && e.Link != "" {
			progress(e.Size)
		}
		return err
	}
	var off int64
	for _, ref := range e.Chunks {
		if err := w.ctx.Err(); err != nil {
			f.Close()
			return err
		}
		if !w.isZero(ref) { // zero chunks become holes
			data, err := w.store.Get(w.ctx, ref.CID)
			if err == nil {
				_, err = chunk.Verify(ref.CID, data)
			}
			if err == nil {
				_, err = f.WriteAt(data, off)
			}
			if err != nil {
				f.Close()
				return fmt.Errorf("chunk %s at offset %d: %w", ref.CID, off, err)
			}
		}
		off += int64(ref.Size)
		progress(int64(ref.Size))
	}
	if err := f.Truncate(off); err != nil { // extends over trailing holes
		f.Close()
		return err
	}
	return f.Close()
}
