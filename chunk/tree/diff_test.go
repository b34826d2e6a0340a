package tree

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/p2pimg/p2pimg/chunk"
)

func TestDiff(t *testing.T) {
	t.Parallel()
	src := t.TempDir()
	randomTree(t, src, 9)
	store := openStore(t)
	out, res := addAndCheckout(t, store, src, chunk.DefaultParams())
	ctx := context.Background()
	if ch, err := Diff(ctx, res.Manifest, out); err != nil || len(ch) != 0 {
		t.Fatalf("fresh checkout differs: %v %+v", err, ch)
	}
	// One byte changed (same size), a file gone, a mode, a link target, an extra file.
	p := filepath.Join(out, "a", "b", "c", "d", "e", "f", "g", "h", "leaf")
	b, _ := os.ReadFile(p)
	b[len(b)/2] ^= 1
	must(t, os.WriteFile(p, b, 0o640))
	must(t, os.Remove(filepath.Join(out, "empty")))
	must(t, os.Chmod(filepath.Join(out, "a", "b"), 0o755))
	must(t, os.Remove(filepath.Join(out, "dangling")))
	must(t, os.Symlink("elsewhere", filepath.Join(out, "dangling")))
	must(t, os.WriteFile(filepath.Join(out, "a", "new"), []byte("x"), 0o644))
	ch, err := Diff(ctx, res.Manifest, out)
	must(t, err)
	want := map[string]string{"a/b/c/d/e/f/g/h/leaf": "content", "empty": "missing", "a/b": "mode", "dangling": "target", "a/new": "extra"}
	got := map[string]string{}
	for _, c := range ch {
		got[c.Path] = c.Kind
	}
	if len(got) != len(want) {
		t.Fatalf("changes %+v, want %v", ch, want)
	}
	for p, k := range want {
		if got[p] != k {
			t.Errorf("%s: %q, want %q (all: %+v)", p, got[p], k, ch)
		}
	}
}

// A fifo or symlink swapped in for a file after Diff looked at it differs
// from the file; reading it neither hangs nor follows the symlink.
func TestSameContentSwapped(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	must(t, syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "target"), nil, 0o644))
	must(t, os.Symlink("target", filepath.Join(dir, "link")))
	root, err := os.OpenRoot(dir)
	must(t, err)
	defer root.Close()
	for _, name := range []string{"fifo", "link"} {
		same, err := sameContent(root, chunk.Entry{Path: name, Type: chunk.File}, nil)
		if err != nil || same {
			t.Errorf("%s swapped in for an empty file: same %v, %v; want a difference", name, same, err)
		}
	}
}
