package tree

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/badgerstore"
	"github.com/p2pimg/p2pimg/chunk/badgerstore/badgertest"
)

func openStore(t *testing.T) *badgerstore.DB { return badgertest.Open(t) }

// randomTree writes a tree of random files, empty files, deep paths,
// symlinks and odd modes under dir.
func randomTree(t *testing.T, dir string, seed uint64) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 7))
	deep := filepath.Join(dir, "a", "b", "c", "d", "e", "f", "g", "h")
	must(t, os.MkdirAll(deep, 0o750))
	must(t, os.WriteFile(filepath.Join(deep, "leaf"), []byte("deep"), 0o640))
	must(t, os.WriteFile(filepath.Join(dir, "empty"), nil, 0o600))
	must(t, os.MkdirAll(filepath.Join(dir, "a-b"), 0o700))
	for i := range 30 {
		data := make([]byte, r.IntN(300<<10))
		for k := range data {
			data[k] = byte(r.Uint32())
		}
		name := filepath.Join(dir, []string{"a", "a-b", "."}[i%3], fmt.Sprintf("file%02d.bin", i))
		must(t, os.WriteFile(name, data, fs.FileMode(0o600|r.IntN(0o200))))
	}
	must(t, os.Symlink("a/b/c", filepath.Join(dir, "link-to-dir")))
	must(t, os.Symlink("/etc/passwd", filepath.Join(dir, "abs-link")))
	must(t, os.Symlink("missing", filepath.Join(dir, "dangling")))
	must(t, os.Chmod(filepath.Join(dir, "a", "b"), 0o711))
	must(t, os.Chmod(filepath.Join(dir, "empty"), 0o4755|fs.ModeSetuid))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// sameTree fails unless b has exactly a's entries, bytes, modes, link
// targets and file mtimes.
func sameTree(t *testing.T, a, b string) {
	t.Helper()
	seen := map[string]bool{}
	err := filepath.WalkDir(a, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(a, p)
		seen[rel] = true
		q := filepath.Join(b, rel)
		fa, _ := os.Lstat(p)
		fb, err := os.Lstat(q)
		if err != nil {
			return fmt.Errorf("%s missing in checkout: %w", rel, err)
		}
		if fa.Mode() != fb.Mode() && rel != "." {
			return fmt.Errorf("%s: mode %v, want %v", rel, fb.Mode(), fa.Mode())
		}
		switch {
		case fa.Mode()&fs.ModeSymlink != 0:
			ta, _ := os.Readlink(p)
			tb, _ := os.Readlink(q)
			if ta != tb {
				return fmt.Errorf("%s: target %q, want %q", rel, tb, ta)
			}
		case fa.Mode().IsRegular():
			if !sameFile(t, p, q) {
				return fmt.Errorf("%s: contents differ", rel)
			}
			if !fa.ModTime().Equal(fb.ModTime()) {
				return fmt.Errorf("%s: mtime %v, want %v", rel, fb.ModTime(), fa.ModTime())
			}
		}
		return nil
	})
	must(t, err)
	must(t, filepath.WalkDir(b, func(p string, d fs.DirEntry, err error) error {
		rel, _ := filepath.Rel(b, p)
		if !seen[rel] {
			return fmt.Errorf("checkout has extra %s", rel)
		}
		return err
	}))
}

func sameFile(t *testing.T, a, b string) bool {
	fa, err := os.Open(a)
	must(t, err)
	defer fa.Close()
	fb, err := os.Open(b)
	must(t, err)
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, _ := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return false
		}
		if ea != nil {
			return true
		}
	}
}

func addAndCheckout(t *testing.T, store *badgerstore.DB, src string, p chunk.Params) (string, *AddResult) {
	t.Helper()
	ctx := context.Background()
	res, err := Add(ctx, store, src, p, nil)
	must(t, err)
	m, err := chunk.DecodeManifest(res.Encoded)
	must(t, err)
	out := filepath.Join(t.TempDir(), "out")
	must(t, Checkout(ctx, store, m, out, CheckoutOptions{}))
	return out, res
}

func TestRoundTripRandomTrees(t *testing.T) {
	t.Parallel()
	small, _ := chunk.NewParams(chunk.CDC, 4<<10, chunk.BLAKE3)
	fixed, _ := chunk.NewParams(chunk.Fixed, 16<<10, chunk.SHA256)
	for i, p := range []chunk.Params{chunk.DefaultParams(), small, fixed} {
		t.Run(p.String(), func(t *testing.T) {
			t.Parallel()
			src := t.TempDir()
			randomTree(t, src, uint64(i))
			store := openStore(t)
			out, res := addAndCheckout(t, store, src, p)
			sameTree(t, src, out)
			// Adding the same tree again stores nothing new and gives the same id.
			again, err := Add(context.Background(), store, src, p, nil)
			must(t, err)
			if again.CID != res.CID || again.NewChunks != 0 {
				t.Fatalf("second add: cid %s vs %s, %d new chunks", again.CID, res.CID, again.NewChunks)
			}
		})
	}
}

func TestSparseMultiGiBFile(t *testing.T) {
	t.Parallel()
	src := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(src)
	must(t, err)
	const size = 2<<30 + 12345
	must(t, f.Truncate(size))
	for _, off := range []int64{0, 1 << 30, size - 5000} {
		_, err := f.WriteAt(bytes.Repeat([]byte{0xab, 0xcd, 0x01}, 1000), off)
		must(t, err)
	}
	must(t, f.Close())
	store := openStore(t)
	p, _ := chunk.NewParams(chunk.Fixed, 64<<10, chunk.SHA256)
	out, res := addAndCheckout(t, store, src, p)
	if res.NewBytes > 1<<20 {
		t.Fatalf("stored %d new bytes for a sparse file with 9 KB of data", res.NewBytes)
	}
	got := filepath.Join(out, "disk.img")
	if !sameFile(t, src, got) {
		t.Fatal("sparse file differs after checkout")
	}
	var st syscall.Stat_t
	must(t, syscall.Stat(got, &st))
	if st.Size != size || st.Blocks*512 > 4<<20 {
		t.Fatalf("checkout is %d bytes with %d allocated: not sparse", st.Size, st.Blocks*512)
	}
}

func TestAddSkipsSpecialFiles(t *testing.T) {
	t.Parallel()
	src := t.TempDir()
	must(t, os.WriteFile(filepath.Join(src, "ok"), []byte("x"), 0o644))
	must(t, syscall.Mkfifo(filepath.Join(src, "pipe"), 0o644))
	res, err := Add(context.Background(), openStore(t), src, chunk.DefaultParams(), nil)
	must(t, err)
	if len(res.Skipped) != 1 || res.Skipped[0].Path != "pipe" || !strings.Contains(res.Skipped[0].Reason, "fifo") {
		t.Fatalf("skipped = %+v", res.Skipped)
	}
	if len(res.Manifest.Entries) != 1 {
		t.Fatalf("entries = %+v", res.Manifest.Entries)
	}
}

func TestAddBadInput(t *testing.T) {
	t.Parallel()
	store := openStore(t)
	dir := t.TempDir()
	if _, err := Add(context.Background(), store, filepath.Join(dir, "absent"), chunk.DefaultParams(), nil); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing path: %v", err)
	}
	must(t, syscall.Mkfifo(filepath.Join(dir, "pipe"), 0o644))
	if _, err := Add(context.Background(), store, filepath.Join(dir, "pipe"), chunk.DefaultParams(), nil); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("fifo root: %v", err)
	}
	if os.Geteuid() != 0 { // root reads everything
		must(t, os.WriteFile(filepath.Join(dir, "secret"), []byte("x"), 0o000))
		if _, err := Add(context.Background(), store, dir, chunk.DefaultParams(), nil); !errors.Is(err, fs.ErrPermission) {
			t.Fatalf("unreadable file: %v", err)
		}
	}
	if st, _ := store.Stats(context.Background(), nil); st.Chunks != 0 {
		t.Fatalf("failed adds stored %d chunks", st.Chunks)
	}
}

func TestCheckoutRefusesNonEmptyAndForceReplaces(t *testing.T) {
	t.Parallel()
	src := t.TempDir()
	must(t, os.WriteFile(filepath.Join(src, "f"), []byte("new"), 0o644))
	store := openStore(t)
	res, err := Add(context.Background(), store, src, chunk.DefaultParams(), nil)
	must(t, err)
	out := t.TempDir()
	must(t, os.Symlink("/etc/hostname", filepath.Join(out, "f")))
	err = Checkout(context.Background(), store, res.Manifest, out, CheckoutOptions{})
	if !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("non-empty: %v", err)
	}
	must(t, Checkout(context.Background(), store, res.Manifest, out, CheckoutOptions{Force: true}))
	if b, _ := os.ReadFile(filepath.Join(out, "f")); string(b) != "new" {
		t.Fatalf("force checkout wrote %q", b)
	}
	if fi, _ := os.Lstat(filepath.Join(out, "f")); fi.Mode()&fs.ModeSymlink != 0 {
		t.Fatal("force checkout wrote through a symlink")
	}
}

func TestCheckoutCorruptChunkFails(t *testing.T) {
	t.Parallel()
	src := t.TempDir()
	must(t, os.WriteFile(filepath.Join(src, "f"), bytes.Repeat([]byte("abc"), 10000), 0o644))
	store := openStore(t)
	res, err := Add(context.Background(), store, src, chunk.DefaultParams(), nil)
	must(t, err)
	// A manifest naming a chunk the store lacks: the checkout fails naming it.
	m := *res.Manifest
	m.Entries = append([]chunk.Entry{}, m.Entries...)
	other, _ := chunk.SumCID([]byte("other"), chunk.SHA256)
	m.Entries[0].Chunks = []chunk.Ref{{CID: other, Size: 30000}}
	err = Checkout(context.Background(), store, &m, filepath.Join(t.TempDir(), "o"), CheckoutOptions{})
	if !errors.Is(err, chunk.ErrNotFound) || !strings.Contains(err.Error(), other.String()) {
		t.Fatalf("missing chunk: %v", err)
	}
}
