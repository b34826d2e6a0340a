package fuseview

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ipfs/go-cid"
	"golang.org/x/sys/unix"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/badgerstore"
	"github.com/p2pimg/p2pimg/chunk/tree"
)

// needFUSE skips the test, saying why, where this host cannot serve FUSE.
func needFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("fuse view tests mount real FUSE file systems: run as root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("fuse view tests need /dev/fuse: %v", err)
	}
	if err := Works(t.TempDir()); err != nil {
		t.Skipf("this host refuses FUSE mounts: %v", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// randomTree writes random files, empty ones, deep paths, symlinks, odd
// modes and owners, and a sparse file of sparseSize bytes with a few data
// extents, under dir.
func randomTree(t *testing.T, dir string, seed uint64, sparseSize int64) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 11))
	deep := filepath.Join(dir, "a", "b", "c", "d")
	must(t, os.MkdirAll(deep, 0o750))
	must(t, os.MkdirAll(filepath.Join(dir, "empty-dir"), 0o700))
	must(t, os.WriteFile(filepath.Join(dir, "empty"), nil, 0o600))
	for i := range 24 {
		data := make([]byte, r.IntN(400<<10))
		for k := range data {
			data[k] = byte(r.Uint32())
		}
		name := filepath.Join(dir, []string{"a", "a/b/c/d", "."}[i%3], fmt.Sprintf("f%02d", i))
		must(t, os.WriteFile(name, data, fs.FileMode(0o400|r.IntN(0o377))))
		must(t, os.Lchown(name, 1000+r.IntN(3), 100+r.IntN(3)))
	}
	must(t, os.Link(filepath.Join(dir, "a", "f00"), filepath.Join(dir, "hard")))
	for p, name := range map[string]string{"a/f00": "user.origin", "a": "user.dir", "empty": "user.empty"} {
		if err := unix.Lsetxattr(filepath.Join(dir, p), name, []byte(name+" value"), 0); err != nil {
			t.Skipf("the temp dir keeps no user xattrs: %v", err)
		}
	}
	must(t, os.Symlink("a/b", filepath.Join(dir, "to-dir")))
	must(t, os.Symlink("/etc/passwd", filepath.Join(dir, "abs")))
	must(t, os.Symlink("missing", filepath.Join(dir, "dangling")))
	must(t, os.Chmod(filepath.Join(dir, "empty"), 0o755|fs.ModeSetuid))
	must(t, os.Chmod(filepath.Join(dir, "a"), 0o1777|fs.ModeSticky))
	f, err := os.Create(filepath.Join(dir, "disk.raw"))
	must(t, err)
	defer f.Close()
	must(t, f.Truncate(sparseSize))
	for _, at := range []int64{0, 1 << 20, sparseSize / 2, sparseSize - 200<<10} {
		b := make([]byte, 100<<10+r.IntN(100<<10))
		for k := range b {
			b[k] = byte(r.Uint32())
		}
		_, err := f.WriteAt(b, at)
		must(t, err)
	}
}

type testLayer struct {
	store *badgerstore.DB
	m     *chunk.Manifest
	src   string
}

func addTree(t *testing.T, sparse int64, p chunk.Params) testLayer {
	t.Helper()
	ctx := context.Background()
	store, err := badgerstore.Open(t.TempDir(), nil)
	must(t, err)
	t.Cleanup(func() { store.Close() })
	src := t.TempDir()
	randomTree(t, src, 1, sparse)
	res, err := tree.Add(ctx, store, src, p, nil)
	must(t, err)
	m, err := chunk.DecodeManifest(res.Encoded)
	must(t, err)
	return testLayer{store, m, src}
}

func mount(t *testing.T, l testLayer, cfg Config) *View {
	t.Helper()
	if cfg.Store == nil {
		cfg.Store = l.store
	}
	cfg.Name = "p2pimg-test"
	dir := t.TempDir()
	v, err := Mount(dir, l.m, cfg)
	must(t, err)
	t.Cleanup(func() {
		if err := v.Unmount(); err != nil {
			t.Error(err)
		}
	})
	return v
}

// TestViewEqualsCheckout: every byte and attribute read through the view
// of a random tree with a sparse file equals a checkout: content-defined
// chunks with a small sparse file, and fixed 1 MiB blocks (so adding it
// stays quick) with a sparse file over 2 GiB.
func TestViewEqualsCheckout(t *testing.T) {
	needFUSE(t)
	fixed, _ := chunk.NewParams(chunk.Fixed, 1<<20, chunk.SHA256)
	for _, tc := range []struct {
		name   string
		p      chunk.Params
		sparse int64
	}{{"cdc", chunk.DefaultParams(), 64<<20 + 777}, {"fixed-2GiB", fixed, 2<<30 + 12345}} {
		t.Run(tc.name, func(t *testing.T) {
			if testing.Short() && tc.sparse > 1<<30 {
				t.Skip("short: no multi-GiB file")
			}
			viewEqualsCheckout(t, addTree(t, tc.sparse, tc.p), tc.sparse)
		})
	}
}

func viewEqualsCheckout(t *testing.T, l testLayer, sparse int64) {
	out := filepath.Join(t.TempDir(), "out")
	must(t, tree.Checkout(context.Background(), l.store, l.m, out, tree.CheckoutOptions{Owners: true}))
	v := mount(t, l, Config{})
	sameTree(t, out, v.Dir())
	var s1, s2 unix.Stat_t
	must(t, unix.Stat(filepath.Join(v.Dir(), "a", "f00"), &s1))
	must(t, unix.Stat(filepath.Join(v.Dir(), "hard"), &s2))
	if s1.Ino != s2.Ino || s1.Nlink != 2 {
		t.Fatalf("hard link in the view: inodes %d and %d, nlink %d; want one inode with two names", s1.Ino, s2.Ino, s1.Nlink)
	}

	// The sparse file's zeros are holes in the view.
	f, err := os.Open(filepath.Join(v.Dir(), "disk.raw"))
	must(t, err)
	defer f.Close()
	hole, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_HOLE)
	must(t, err)
	if hole >= sparse {
		t.Fatalf("SEEK_HOLE from 0 = %d: no hole in a sparse file of %d bytes", hole, sparse)
	}
	data, err := unix.Seek(int(f.Fd()), hole, unix.SEEK_DATA)
	must(t, err)
	if data <= hole || data > sparse/2 {
		t.Fatalf("SEEK_DATA from the hole at %d = %d, want the extent by %d", hole, data, sparse/2)
	}
	// Read-only: writes are refused.
	if _, err := os.OpenFile(filepath.Join(v.Dir(), "empty"), os.O_WRONLY, 0); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("open for writing: %v, want EROFS", err)
	}
	if err := os.WriteFile(filepath.Join(v.Dir(), "new"), nil, 0o600); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("create: %v, want EROFS", err)
	}
	if st := v.Stats(); st.StoreReads == 0 {
		t.Fatalf("no chunk read from the store: %+v", st)
	}
}

// sameTree fails unless b has exactly a's entries, bytes, modes, owners,
// link counts, sizes, link targets and mtimes.
func sameTree(t *testing.T, a, b string) {
	t.Helper()
	seen := map[string]bool{}
	must(t, filepath.WalkDir(a, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(a, p)
		seen[rel] = true
		if rel == "." {
			return nil
		}
		q := filepath.Join(b, rel)
		var sa, sb unix.Stat_t
		must(t, unix.Lstat(p, &sa))
		if err := unix.Lstat(q, &sb); err != nil {
			return fmt.Errorf("%s missing in the view: %w", rel, err)
		}
		if sa.Mode != sb.Mode || sa.Uid != sb.Uid || sa.Gid != sb.Gid || sa.Nlink != sb.Nlink {
			return fmt.Errorf("%s: mode %o uid %d gid %d nlink %d in the view, checkout %o %d %d %d",
				rel, sb.Mode, sb.Uid, sb.Gid, sb.Nlink, sa.Mode, sa.Uid, sa.Gid, sa.Nlink)
		}
		if xa, xb := xattrsOf(t, p), xattrsOf(t, q); !maps.Equal(xa, xb) {
			return fmt.Errorf("%s: xattrs %q in the view, checkout %q", rel, xb, xa)
		}
		if d.Type()&fs.ModeSymlink != 0 {
			ta, _ := os.Readlink(p)
			tb, _ := os.Readlink(q)
			if ta != tb || sa.Size != sb.Size {
				return fmt.Errorf("%s: target %q, want %q", rel, tb, ta)
			}
			return nil
		}
		if sa.Mtim != sb.Mtim {
			return fmt.Errorf("%s: mtime %v, want %v", rel, sb.Mtim, sa.Mtim)
		}
		if d.Type().IsRegular() {
			if sa.Size != sb.Size {
				return fmt.Errorf("%s: size %d, want %d", rel, sb.Size, sa.Size)
			}
			if !sameFile(t, p, q) {
				return fmt.Errorf("%s: contents differ", rel)
			}
		}
		return nil
	}))
	var extra []string
	must(t, filepath.WalkDir(b, func(p string, d fs.DirEntry, err error) error {
		if rel, _ := filepath.Rel(b, p); !seen[rel] {
			extra = append(extra, rel)
		}
		return err
	}))
	if len(extra) > 0 {
		t.Fatalf("the view has entries the checkout lacks: %q", extra)
	}
}

// xattrsOf reads p's extended attributes (not following a symlink).
func xattrsOf(t *testing.T, p string) map[string]string {
	t.Helper()
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	must(t, err)
	out := map[string]string{}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		if name == "" || name == "security.selinux" {
			continue
		}
		v := make([]byte, 64<<10)
		k, err := unix.Lgetxattr(p, name, v)
		must(t, err)
		out[name] = string(v[:k])
	}
	return out
}

// sameFile compares two files by their sha2-256.
func sameFile(t *testing.T, a, b string) bool {
	return fileSum(t, a) == fileSum(t, b)
}

func fileSum(t *testing.T, p string) [32]byte {
	f, err := os.Open(p)
	must(t, err)
	defer f.Close()
	h := sha256.New()
	_, err = io.CopyBuffer(h, f, make([]byte, 1<<20))
	must(t, err)
	return [32]byte(h.Sum(nil))
}

// missing is a store that has lost every chunk of one file.
type missing struct {
	Chunks
	lost map[cid.Cid]bool
}

func (s missing) GetInto(ctx context.Context, id cid.Cid, buf []byte) ([]byte, error) {
	if s.lost[id] {
		return nil, chunk.ErrNotFound
	}
	return s.Chunks.GetInto(ctx, id, buf)
}

// GetManyInto is the store's, but the lost chunks are not found.
func (s missing) GetManyInto(ctx context.Context, ids []cid.Cid, bufs [][]byte) []error {
	errs := s.Chunks.(manyReader).GetManyInto(ctx, ids, bufs)
	for i, id := range ids {
		if s.lost[id] {
			clear(bufs[i])
			errs[i] = chunk.ErrNotFound
		}
	}
	return errs
}

var _ manyReader = (*badgerstore.DB)(nil)

type fetcher struct {
	store Chunks
	fail  error
}

func (f *fetcher) FetchChunk(ctx context.Context, id cid.Cid) ([]byte, error) {
	if f.fail != nil {
		return nil, f.fail
	}
	return f.store.GetInto(ctx, id, nil)
}

// TestMissingChunk: a chunk missing from the store is fetched through
// the hook; without a supplier the read fails with EIO and says which.
func TestMissingChunk(t *testing.T) {
	needFUSE(t)
	l := addTree(t, 1<<20, chunk.DefaultParams())
	var file *chunk.Entry
	for i := range l.m.Entries {
		if e := &l.m.Entries[i]; e.Type == chunk.File && e.Size > 100<<10 {
			file = e
			break
		}
	}
	lost := map[cid.Cid]bool{} // every other chunk: reads mix stored and missing ones
	for i, r := range file.Chunks {
		if i%2 == 0 {
			lost[r.CID] = true
		}
	}
	want, err := os.ReadFile(filepath.Join(l.src, file.Path))
	must(t, err)

	for _, tc := range []struct {
		name string
		fail error
	}{{"fetched", nil}, {"unsupplied", errors.New("no peer has it")}} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fetcher{store: l.store, fail: tc.fail}
			reported := make(chan cid.Cid, 100)
			v := mount(t, l, Config{Fetch: f, Store: missing{l.store, lost},
				OnReadError: func(id cid.Cid, err error) { reported <- id }})
			got, err := os.ReadFile(filepath.Join(v.Dir(), file.Path))
			if tc.fail == nil {
				must(t, err)
				if !bytes.Equal(got, want) {
					t.Fatal("fetched bytes differ")
				}
				if st := v.Stats(); st.Fetched != int64(len(lost)) {
					t.Fatalf("fetched %d chunks, want %d", st.Fetched, len(lost))
				}
				return
			}
			if !errors.Is(err, syscall.EIO) {
				t.Fatalf("read: %v, want EIO", err)
			}
			if id := <-reported; !lost[id] {
				t.Fatalf("reported %v, want a lost chunk", id)
			}
		})
	}
}
