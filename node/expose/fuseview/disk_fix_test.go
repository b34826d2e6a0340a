package fuseview

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/tree"
)

// TestCommitHardLinkedDisk: a disk image with two names (hard links) is
// one inode in the view, and its commit gives every name the new bytes,
// the names still hard links of each other, whichever name was written
// and whichever sorts first (the manifest makes the first one the target).
func TestCommitHardLinkedDisk(t *testing.T) {
	needFUSE(t)
	for _, tc := range []struct {
		name       string
		file, link string // link is made as a second name of file
		via        string // the name written
	}{
		{"link sorts after", "big.bin", "link.bin", "big.bin"},
		{"written through the link", "big.bin", "link.bin", "link.bin"},
		{"link sorts first", "big.bin", "a-link.bin", "big.bin"},
		{"link sorts first, written through it", "big.bin", "a-link.bin", "a-link.bin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := fixedParams(t)
			l, want := diskLayer(t, 0, p, "", func(dir string) []byte {
				data := make([]byte, 2<<20)
				r := rand.New(rand.NewPCG(7, 7))
				for k := range data {
					data[k] = byte(r.Uint32())
				}
				must(t, os.WriteFile(filepath.Join(dir, tc.file), data, 0o644))
				must(t, os.Link(filepath.Join(dir, tc.file), filepath.Join(dir, tc.link)))
				must(t, os.WriteFile(filepath.Join(dir, "small.txt"), []byte("small"), 0o644))
				return data
			})
			v := mount(t, l, Config{DeltaDir: t.TempDir(), Base: "v1", DiskMin: 1 << 20})
			if got := v.Disks(); len(got) != 2 {
				t.Fatalf("disks %v, want both names (each is bound over an overlay)", got)
			}
			f, err := os.OpenFile(filepath.Join(v.Dir(), tc.via), os.O_RDWR, 0)
			must(t, err)
			_, err = f.WriteAt([]byte("VIA-BIG"), 100)
			must(t, err)
			must(t, f.Close())
			copy(want[100:], "VIA-BIG")
			for _, name := range []string{tc.file, tc.link} {
				sameBytes(t, filepath.Join(v.Dir(), name), want)
			}
			if files, _ := v.Changes(); files != 1 {
				t.Fatalf("%d changed files, want 1 (one inode)", files)
			}

			entries, done, err := v.CommitDisks(context.Background(), p, l.store.Put)
			must(t, err)
			nm := &chunk.Manifest{Params: p, Entries: entries}
			if err := nm.Validate(); err != nil {
				t.Fatalf("committed layer: %v", err)
			}
			out := t.TempDir()
			flat := chunk.Flatten([]*chunk.Manifest{l.m, nm})
			must(t, tree.Checkout(context.Background(), l.store, flat, out, tree.CheckoutOptions{}))
			a, b := filepath.Join(out, tc.file), filepath.Join(out, tc.link)
			sameBytes(t, a, want)
			sameBytes(t, b, want)
			fa, err := os.Stat(a)
			must(t, err)
			fb, err := os.Stat(b)
			must(t, err)
			if !os.SameFile(fa, fb) {
				t.Fatalf("%s and %s are no longer hard links of each other after the commit", tc.file, tc.link)
			}
			must(t, done())
			if files, _ := v.Changes(); files != 0 {
				t.Fatalf("%d changed files after the commit", files)
			}
		})
	}
}

// fileTimes is a file's atime, mtime and ctime.
func fileTimes(t *testing.T, p string) (atime, mtime, ctime time.Time) {
	t.Helper()
	var st syscall.Stat_t
	must(t, syscall.Stat(p, &st))
	return time.Unix(st.Atim.Unix()), time.Unix(st.Mtim.Unix()), time.Unix(st.Ctim.Unix())
}

// inRange reports whether tm is in [from, to].
func inRange(tm, from, to time.Time) bool { return !tm.Before(from) && !tm.After(to) }

// TestDiskTimes: a disk image shows the layer's times until written (reads
// change nothing); a write moves mtime and ctime on, touch and utimensat
// take effect, the times survive a remount (and go into a commit), and a
// delta made anew shows the layer's times again.
func TestDiskTimes(t *testing.T) {
	needFUSE(t)
	layerTime := time.Date(2001, 2, 3, 4, 5, 6, 7000, time.UTC)
	l, _ := diskLayer(t, 0, fixedParams(t), "", func(dir string) []byte {
		p := filepath.Join(dir, "disk.raw")
		must(t, os.WriteFile(p, bytes.Repeat([]byte{1}, 1<<20), 0o644))
		must(t, os.Chtimes(p, layerTime, layerTime))
		return nil
	})
	layerTime = time.Unix(0, l.m.Entries[0].MTime)
	deltas := t.TempDir()
	cfg := Config{Store: l.store, DeltaDir: deltas, Base: "v1", Name: "p2pimg-test"}
	v, err := Mount(t.TempDir(), l.m, cfg)
	must(t, err)
	mounted := v
	t.Cleanup(func() {
		if mounted != nil {
			mounted.Unmount()
		}
	})
	disk := filepath.Join(v.Dir(), "disk.raw")
	check := func(what string, got, from, to time.Time) {
		t.Helper()
		if !inRange(got, from, to) {
			t.Fatalf("%s: %v, want in [%v, %v]", what, got, from, to)
		}
	}

	_, m, c := fileTimes(t, disk)
	check("mtime of an unwritten disk", m, layerTime, layerTime)
	check("ctime of an unwritten disk", c, layerTime, layerTime)
	_, err = os.ReadFile(disk)
	must(t, err)
	_, m, c = fileTimes(t, disk)
	check("mtime after a read", m, layerTime, layerTime)
	check("ctime after a read", c, layerTime, layerTime)

	before := time.Now()
	f, err := os.OpenFile(disk, os.O_RDWR, 0)
	must(t, err)
	_, err = f.WriteAt([]byte("x"), 100)
	must(t, err)
	must(t, f.Close())
	after := time.Now()
	_, m, c = fileTimes(t, disk)
	check("mtime after a write", m, before, after)
	check("ctime after a write", c, before, after)

	before = time.Now()
	if out, err := exec.Command("touch", disk).CombinedOutput(); err != nil {
		t.Fatalf("touch: %v: %s", err, out)
	}
	after = time.Now()
	_, m, c = fileTimes(t, disk)
	check("mtime after touch", m, before, after)
	check("ctime after touch", c, before, after)

	setA, setM := time.Unix(1262304000, 123456789), time.Unix(1262390400, 987654321)
	before = time.Now()
	must(t, os.Chtimes(disk, setA, setM))
	after = time.Now()
	a, m, c := fileTimes(t, disk)
	check("atime set", a, setA, setA)
	check("mtime set", m, setM, setM)
	check("ctime after setting times", c, before, after)
	ctime := c

	entries, _, err := v.CommitDisks(context.Background(), l.m.Params, l.store.Put)
	must(t, err)
	if len(entries) != 1 || entries[0].MTime != setM.UnixNano() {
		t.Fatalf("committed entries %+v, want one with the disk's mtime %v", entries, setM)
	}
	mounted = nil
	must(t, v.Unmount())

	v2, err := Mount(t.TempDir(), l.m, cfg)
	must(t, err)
	mounted = v2
	a, m, c = fileTimes(t, filepath.Join(v2.Dir(), "disk.raw"))
	check("atime after a remount", a, setA, setA)
	check("mtime after a remount", m, setM, setM)
	check("ctime after a remount", c, ctime, ctime)
	mounted = nil
	must(t, v2.Unmount())

	cfg.Base = "v2" // another base: the delta is made anew
	v3 := mount(t, l, cfg)
	_, m, c = fileTimes(t, filepath.Join(v3.Dir(), "disk.raw"))
	check("mtime with a new delta", m, layerTime, layerTime)
	check("ctime with a new delta", c, layerTime, layerTime)
}

// TestDiskWriteErrors: with the delta's file system full, a write fails
// with ENOSPC (not EIO: qemu's werror=enospc pauses on it), a reader's
// close does not report the writer's failed flush, the writer's fsync and
// close do, and another writer open at the time learns of it once from
// its fsync even after space is freed.
func TestDiskWriteErrors(t *testing.T) {
	needFUSE(t)
	small := t.TempDir()
	if err := syscall.Mount("tmpfs", small, "tmpfs", 0, "size=512k"); err != nil {
		t.Skipf("cannot mount a tmpfs for a full delta: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(small, syscall.MNT_DETACH) }) // after the view's unmount
	ballast := filepath.Join(small, "ballast")
	must(t, os.WriteFile(ballast, bytes.Repeat([]byte{1}, 128<<10), 0o600))
	l, _ := diskLayer(t, 8<<20, fixedParams(t), "disk.raw", nil)
	v := mount(t, l, Config{DeltaDir: filepath.Join(small, "deltas"), Base: "v1"})
	disk := filepath.Join(v.Dir(), "disk.raw")

	other, err := os.OpenFile(disk, os.O_RDWR, 0)
	must(t, err)
	defer other.Close() // on failure: an open file would hold the view
	_, err = other.WriteAt([]byte("other"), 0)
	must(t, err)
	reader, err := os.Open(disk)
	must(t, err)
	defer reader.Close()
	w, err := os.OpenFile(disk, os.O_RDWR, 0)
	must(t, err)
	defer w.Close()
	block := bytes.Repeat([]byte{7}, 64<<10)
	for off := int64(1 << 20); ; off += int64(len(block)) {
		if off >= 8<<20 {
			t.Fatal("the delta's file system never filled up")
		}
		if _, err = w.WriteAt(block, off); err != nil {
			break
		}
	}
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("a write with the delta's file system full: %v, want ENOSPC", err)
	}
	if err := reader.Close(); err != nil {
		t.Fatalf("a reader's close after a writer's failure: %v, want none", err)
	}
	if err := w.Sync(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("the writer's fsync: %v, want ENOSPC", err)
	}
	if err := w.Close(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("the writer's close: %v, want ENOSPC", err)
	}
	must(t, os.Remove(ballast))
	if err := other.Sync(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("fsync of another writer open at the failure: %v, want ENOSPC once", err)
	}
	if err := other.Sync(); err != nil {
		t.Fatalf("fsync again with space freed: %v", err)
	}
	must(t, other.Close())
	r2, err := os.Open(disk)
	must(t, err)
	_, err = r2.ReadAt(make([]byte, 5), 0)
	must(t, err)
	must(t, r2.Close())
}

// TestDeltaSyncFailureSticks: once a sync of the delta's data fails, the
// kernel may have dropped those writes and a later sync can still
// succeed (it marks the failed pages clean), so every later flush fails
// too, the bitmap on disk never claims the blocks written since the last
// good flush, and the disk cannot be committed; a fsync through the
// view reports EIO for it.
func TestDeltaSyncFailureSticks(t *testing.T) {
	dir := t.TempDir()
	d, err := OpenDelta(dir, "b", 1<<20)
	must(t, err)
	must(t, d.Write(0, bytes.Repeat([]byte{1}, BlockSize)))
	must(t, d.Flush())
	must(t, d.Write(1, bytes.Repeat([]byte{2}, BlockSize)))
	good := d.data
	bad, err := os.Open(filepath.Join(dir, "data"))
	must(t, err)
	must(t, bad.Close()) // its sync fails
	d.data = bad
	if err := d.Flush(); err == nil {
		t.Fatal("a flush whose data sync failed reported success")
	}
	d.data = good // a later sync would succeed
	if err := d.Flush(); err == nil || d.Failed() == nil {
		t.Fatal("a flush after a failed data sync reported success")
	}
	if err := d.Close(); err == nil {
		t.Fatal("closing a delta whose sync failed reported success")
	}
	again, err := OpenDelta(dir, "b", 1<<20)
	must(t, err)
	if !again.Has(0) || again.Has(1) {
		t.Fatalf("after the failure the delta on disk holds block 0: %v, block 1: %v; want true, false", again.Has(0), again.Has(1))
	}
	must(t, again.Close())

	needFUSE(t)
	p := fixedParams(t)
	l, _ := diskLayer(t, 8<<20, p, "disk.raw", nil)
	v := mount(t, l, Config{DeltaDir: t.TempDir(), Base: "v1"})
	f, err := os.OpenFile(filepath.Join(v.Dir(), "disk.raw"), os.O_RDWR, 0)
	must(t, err)
	defer f.Close()
	_, err = f.WriteAt([]byte("changed"), 0)
	must(t, err)
	nodes := v.diskNodes()
	if len(nodes) != 1 {
		t.Fatalf("%d disk nodes, want 1", len(nodes))
	}
	dn := nodes[0]
	dn.mu.Lock()
	good = dn.delta.data
	bad, err = os.Open(good.Name())
	must(t, err)
	must(t, bad.Close())
	dn.delta.data = bad
	dn.mu.Unlock()
	if err := f.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("fsync with the delta's sync failing: %v, want EIO", err)
	}
	dn.mu.Lock()
	dn.delta.data = good
	dn.mu.Unlock()
	_, err = f.WriteAt([]byte("again"), 8192)
	must(t, err)
	if err := f.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("fsync after the delta's sync failed once: %v, want EIO", err)
	}
	_, _, err = v.CommitDisks(context.Background(), p, func(ctx context.Context, b ...chunk.Block) error { return l.store.Put(ctx, b...) })
	if err == nil || !strings.Contains(err.Error(), "cannot be trusted") {
		t.Fatalf("commit of a disk whose delta failed a sync: %v, want a refusal", err)
	}
}
