package tree

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"

	"github.com/p2pimg/p2pimg/chunk"
)

// Change is one way a directory differs from a layer.
type Change struct {
	Path   string `json:"path"`
	Kind   string `json:"kind"` // missing, extra, type, content, mode, target
	Detail string `json:"detail,omitempty"`
}

// Diff compares dir with the layer m: every entry's type, permission bits,
// symlink target and file content (each chunk re-hashed against its CID),
// and the paths dir has that the layer does not. Owners and times are not
// compared. Nothing is written.
func Diff(ctx context.Context, m *chunk.Manifest, dir string) ([]Change, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	var out []Change
	want := map[string]bool{}
	buf := make([]byte, chunk.MaxChunkSize)
	for _, e := range m.Entries {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		want[e.Path] = true
		fi, err := root.Lstat(e.Path)
		if errors.Is(err, fs.ErrNotExist) {
			out = append(out, Change{Path: e.Path, Kind: "missing"})
			continue
		} else if err != nil {
			return nil, err
		}
		if got := entryType(fi.Mode()); got != e.Type {
			out = append(out, Change{Path: e.Path, Kind: "type", Detail: fmt.Sprintf("%s, want %s", got, e.Type)})
			continue
		}
		if e.Type != chunk.Symlink && fi.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != e.Mode {
			out = append(out, Change{Path: e.Path, Kind: "mode", Detail: fmt.Sprintf("%v, want %v", fi.Mode().Perm(), e.Mode.Perm())})
		}
		switch e.Type {
		case chunk.Symlink:
			if t, err := root.Readlink(e.Path); err != nil || t != e.Target {
				out = append(out, Change{Path: e.Path, Kind: "target", Detail: fmt.Sprintf("%q, want %q", t, e.Target)})
			}
		case chunk.File:
			if fi.Size() != e.Size {
				out = append(out, Change{Path: e.Path, Kind: "content", Detail: fmt.Sprintf("%d bytes, want %d", fi.Size(), e.Size)})
				continue
			}
			same, err := sameContent(root, e, buf)
			if err != nil {
				return nil, err
			}
			if !same {
				out = append(out, Change{Path: e.Path, Kind: "content"})
			}
		}
	}
	err = fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == "." {
			return err
		}
		if !want[p] {
			out = append(out, Change{Path: p, Kind: "extra"})
			if d.IsDir() {
				return fs.SkipDir
			}
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, err
}

func entryType(m fs.FileMode) chunk.EntryType {
	switch {
	case m.IsDir():
		return chunk.Dir
	case m.IsRegular():
		return chunk.File
	case m&fs.ModeSymlink != 0:
		return chunk.Symlink
	}
	return 0
}

// sameContent reports whether e's file under root holds e's chunks. What
// was swapped in for the file since it was looked at (a fifo, a symlink)
// is opened without blocking or following, and differs.
func sameContent(root *os.Root, e chunk.Entry, buf []byte) (bool, error) {
	f, err := OpenRegularIn(root, e.Path)
	if errors.Is(err, ErrNotRegular) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	for _, r := range e.Chunks {
		b := buf[:r.Size]
		if _, err := io.ReadFull(f, b); err != nil {
			return false, nil
		}
		if _, err := chunk.Verify(r.CID, b); err != nil {
			return false, nil
		}
	}
	return true, nil
}

// UpperChanges lists what an overlayfs upper directory changes over the
// layer m: removals (whiteout devices), opaque directories, and files or
// symlinks written (content when the layer has the path, extra when not).
// Directories that are only there for their children are not changes.
func UpperChanges(m *chunk.Manifest, upper string) ([]Change, error) {
	has := map[string]bool{}
	for _, e := range m.Entries {
		has[e.Path] = true
	}
	root, err := os.OpenRoot(upper)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	var out []Change
	err = fs.WalkDir(root.FS(), ".", func(rel string, d fs.DirEntry, err error) error {
		if err != nil || rel == "." {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch t := fi.Mode().Type(); {
		case t&fs.ModeCharDevice != 0:
			out = append(out, Change{Path: rel, Kind: "missing", Detail: "removed"})
		case t == fs.ModeDir:
			if isOpaque(root, rel) {
				out = append(out, Change{Path: rel, Kind: "content", Detail: "directory replaced"})
			} else if !has[rel] {
				out = append(out, Change{Path: rel, Kind: "extra"})
				return fs.SkipDir
			}
		default:
			kind := "content"
			if !has[rel] {
				kind = "extra"
			}
			out = append(out, Change{Path: rel, Kind: kind})
		}
		return nil
	})
	return out, err
}
