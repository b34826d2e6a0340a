package expose

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/ipfs/go-cid"

	"github.com/p2pimg/p2pimg/chunk"
)

// checkoutChanges counts the paths of a materialised view that differ
// from the layer checked out there, and the bytes of those that are files
// now: an entry of another type, mode, size or modification time (a
// checkout sets each to the manifest's, and a write moves the time), a
// symlink with another target, a path the layer lacks or a path of the
// layer gone; or any entry whose inode changed after the checkout (its
// ctime: a write that put size and mtime back, as cp -p and tar do, is
// seen too). Content is not hashed, as a view can be large. A view
// whose manifest is not here counts as changed (what it was cannot be
// told); one exposed by a build that did not record its manifest is
// taken as unchanged, as that build took it.
func (x *Exposer) checkoutChanges(e *Exposure) (paths int, bytes int64) {
	if e.Checkout == "" {
		return 0, 0
	}
	id, err := cid.Decode(e.Checkout)
	if err != nil {
		return 1, 0
	}
	g, ok := x.cfg.Store.(chunk.ManifestGetter)
	if !ok {
		return 1, 0
	}
	ctx := context.Background()
	m, err := g.GetManifest(ctx, id)
	if err == nil {
		m, err = chunk.Flat(ctx, g, m)
	}
	if err != nil {
		return 1, 0
	}
	want := make(map[string]*chunk.Entry, len(m.Entries))
	for i := range m.Entries {
		want[m.Entries[i].Path] = &m.Entries[i]
	}
	seen := 0
	filepath.WalkDir(e.Path, func(p string, d fs.DirEntry, err error) error {
		if p == e.Path {
			return nil
		}
		if err != nil {
			paths++
			return nil
		}
		rel, _ := filepath.Rel(e.Path, p)
		ent := want[filepath.ToSlash(rel)]
		if ent != nil {
			seen++
		}
		fi, err := d.Info()
		if err != nil || ent == nil || differs(p, fi, ent, e.CheckedOut) {
			paths++
			if err == nil && fi.Mode().IsRegular() {
				bytes += fi.Size()
			}
		}
		return nil
	})
	return paths + len(want) - seen, bytes
}

// differs reports whether what is at p (fi) is not entry ent as a
// checkout (finished at Unix nanoseconds done, 0: unknown) leaves it.
func differs(p string, fi fs.FileInfo, ent *chunk.Entry, done int64) bool {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && done != 0 && st.Ctim.Nano() > done {
		return true // changed since, whatever it looks like now
	}
	switch ent.Type {
	case chunk.Dir:
		return !fi.IsDir() || fi.Mode().Perm()|fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != ent.Mode
	case chunk.Symlink:
		target, err := os.Readlink(p)
		return fi.Mode()&fs.ModeSymlink == 0 || err != nil || target != ent.Target
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return !fi.Mode().IsRegular() || !ok || fi.Size() != ent.Size || st.Mtim.Nano() != ent.MTime ||
		fi.Mode().Perm()|fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != ent.Mode
}
