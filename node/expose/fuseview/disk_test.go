package fuseview

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/badgerstore"
	"github.com/p2pimg/p2pimg/chunk/tree"
)

// diskLayer adds a one-file layer holding disk.raw: size bytes of random
// data with zero stretches, chunked with p. It returns the layer and the
// file's bytes.
func diskLayer(t *testing.T, size int64, p chunk.Params, name string, fill func(dir string) []byte) (testLayer, []byte) {
	t.Helper()
	store, err := badgerstore.Open(t.TempDir(), nil)
	must(t, err)
	t.Cleanup(func() { store.Close() })
	src := t.TempDir()
	var data []byte
	if fill != nil {
		data = fill(src)
	} else {
		data = make([]byte, size)
		r := rand.New(rand.NewPCG(uint64(size), 3))
		for off := 0; off < len(data); off += 1 << 20 {
			if (off>>20)%4 == 1 {
				continue // a zero stretch: holes in the layer
			}
			for k := off; k < min(off+1<<20, len(data)); k++ {
				data[k] = byte(r.Uint32())
			}
		}
		must(t, os.WriteFile(filepath.Join(src, name), data, 0o644))
	}
	res, err := tree.Add(context.Background(), store, src, p, nil)
	must(t, err)
	m, err := chunk.DecodeManifest(res.Encoded)
	must(t, err)
	return testLayer{store, m, src}, data
}

func fixedParams(t *testing.T) chunk.Params {
	p, err := chunk.NewParams(chunk.Fixed, 64<<10, chunk.SHA256)
	must(t, err)
	return p
}

func blocksOf(t *testing.T, p string) int64 {
	t.Helper()
	var st syscall.Stat_t
	must(t, syscall.Stat(p, &st))
	return st.Blocks
}

func sameBytes(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	must(t, err)
	if !bytes.Equal(got, want) {
		i := 0
		for i < min(len(got), len(want)) && got[i] == want[i] {
			i++
		}
		t.Fatalf("%s: %d bytes, want %d; first difference at %d", path, len(got), len(want), i)
	}
}

// TestDiskWritesGoToDelta: a 4 KiB dd into a disk image of the view adds
// one block to its delta (no copy of the file), reads merge the delta
// over the layer, unaligned writes and truncation behave as on a file,
// the writes survive a remount, and a delta kept for another base is
// dropped.
func TestDiskWritesGoToDelta(t *testing.T) {
	needFUSE(t)
	l, want := diskLayer(t, 16<<20, fixedParams(t), "disk.raw", nil)
	l0 := bytes.Clone(want)
	deltas := t.TempDir()
	v, err := Mount(t.TempDir(), l.m, Config{Store: l.store, DeltaDir: deltas, Base: "v1", Name: "p2pimg-test"})
	must(t, err)
	if got := v.Disks(); len(got) != 1 || got[0] != "disk.raw" {
		t.Fatalf("disks %v, want [disk.raw]", got)
	}
	disk := filepath.Join(v.Dir(), "disk.raw")
	data := filepath.Join(deltas, "disk.raw", "data")
	before := blocksOf(t, data)

	block := bytes.Repeat([]byte{0xa5}, 4096)
	in := filepath.Join(t.TempDir(), "block")
	must(t, os.WriteFile(in, block, 0o600))
	out, err := exec.Command("dd", "if="+in, "of="+disk, "bs=4k", "count=1", "seek=1000", "conv=notrunc,fsync").CombinedOutput()
	if err != nil {
		t.Fatalf("dd: %v: %s", err, out)
	}
	copy(want[1000*4096:], block)
	if grew := blocksOf(t, data) - before; grew != 4096/512 {
		t.Fatalf("a 4 KiB write grew the delta by %d sectors, want %d (one block)", grew, 4096/512)
	}
	if files, size := v.Changes(); files != 1 || size != 4096 {
		t.Fatalf("changes %d files, %d bytes; want 1 and 4096", files, size)
	}
	sameBytes(t, disk, want)

	f, err := os.OpenFile(disk, os.O_RDWR, 0)
	must(t, err)
	odd := bytes.Repeat([]byte{0x3c}, 10000)
	_, err = f.WriteAt(odd, 3<<20+4000) // crosses three blocks, none aligned
	must(t, err)
	copy(want[3<<20+4000:], odd)
	if _, err := f.WriteAt([]byte("x"), 1<<41); !errors.Is(err, syscall.EFBIG) {
		t.Fatalf("a write at 2 TiB: %v, want EFBIG (no unbounded bitmap)", err)
	}
	must(t, f.Truncate(15<<20+100)) // a shrink, then growing again reads zeros
	want = want[:15<<20+100]
	_, err = f.WriteAt([]byte("tail"), 15<<20+200)
	must(t, err)
	want = append(want, make([]byte, 100)...)
	want = append(want, "tail"...)
	must(t, f.Close())
	sameBytes(t, disk, want)

	must(t, v.Unmount())
	v2, err := Mount(t.TempDir(), l.m, Config{Store: l.store, DeltaDir: deltas, Base: "v1", Name: "p2pimg-test"})
	must(t, err)
	sameBytes(t, filepath.Join(v2.Dir(), "disk.raw"), want)
	must(t, v2.Unmount())
	v3, err := Mount(t.TempDir(), l.m, Config{Store: l.store, DeltaDir: deltas, Base: "v2", Name: "p2pimg-test"})
	must(t, err)
	sameBytes(t, filepath.Join(v3.Dir(), "disk.raw"), l0)
	must(t, v3.Unmount())
}

// TestDeltaCrash: the bitmap on disk never claims a block before its data
// and the flush that makes it durable; after a flush it does.
func TestDeltaCrash(t *testing.T) {
	dir := t.TempDir()
	d, err := OpenDelta(dir, "b", 1<<20)
	must(t, err)
	must(t, d.Write(3, bytes.Repeat([]byte{1}, BlockSize)))
	// a crash now: nothing flushed
	again, err := OpenDelta(dir, "b", 1<<20)
	must(t, err)
	if again.Has(3) || again.Blocks() != 0 || again.Changed() {
		t.Fatal("an unflushed block is claimed after a crash")
	}
	must(t, d.Flush())
	again, err = OpenDelta(dir, "b", 1<<20)
	must(t, err)
	if !again.Has(3) || again.Blocks() != 1 || !again.Changed() {
		t.Fatal("a flushed block is not claimed")
	}
	buf := make([]byte, BlockSize)
	must(t, again.ReadAt(buf, 3*BlockSize))
	if !bytes.Equal(buf, bytes.Repeat([]byte{1}, BlockSize)) {
		t.Fatal("a flushed block reads wrong")
	}
	must(t, again.MarkCommitted(again.Gen()))
	must(t, d.Close())
	if again, _ = OpenDelta(dir, "b", 1<<20); again.Changed() {
		t.Fatal("changes remain after they were committed")
	}
}

// TestCommitDisks: a commit of the written disk keeps every chunk no
// write touched and makes new chunks exactly of the changed ones.
func TestCommitDisks(t *testing.T) {
	needFUSE(t)
	p := fixedParams(t)
	l, want := diskLayer(t, 8<<20, p, "disk.raw", nil)
	v := mount(t, l, Config{DeltaDir: t.TempDir(), Base: "v1"})
	f, err := os.OpenFile(filepath.Join(v.Dir(), "disk.raw"), os.O_RDWR, 0)
	must(t, err)
	for _, at := range []int64{0, 5<<20 + 4096, 5<<20 + 8192, 7<<20 + 65530} {
		_, err := f.WriteAt([]byte("changed!"), at)
		must(t, err)
		copy(want[at:], "changed!")
	}
	must(t, f.Close())
	var stored int
	entries, done, err := v.CommitDisks(context.Background(), p, func(ctx context.Context, b ...chunk.Block) error {
		stored += len(b)
		return l.store.Put(ctx, b...)
	})
	must(t, err)
	if len(entries) != 1 {
		t.Fatalf("%d entries, want 1", len(entries))
	}
	old, e := l.m.Entries[0].Chunks, entries[0]
	var changed []int
	for i := range e.Chunks {
		if !e.Chunks[i].CID.Equals(old[i].CID) {
			changed = append(changed, i)
		}
	}
	// 0 -> chunk 0; 5 MiB+4 KiB and +8 KiB -> chunk 80; 7 MiB+65530 spans chunks 112 and 113
	if got := intsString(changed); got != "0 80 112 113" {
		t.Fatalf("changed chunks %s, want 0 80 112 113", got)
	}
	if stored != 4 {
		t.Fatalf("%d chunks stored, want 4", stored)
	}
	nm := &chunk.Manifest{Params: p, Entries: []chunk.Entry{e}}
	out := t.TempDir()
	must(t, tree.Checkout(context.Background(), l.store, nm, out, tree.CheckoutOptions{}))
	sameBytes(t, filepath.Join(out, "disk.raw"), want)
	if files, _ := v.Changes(); files != 1 {
		t.Fatal("changes not reported before the commit is done")
	}
	must(t, done())
	if files, _ := v.Changes(); files != 0 {
		t.Fatalf("%d changed files after the commit", files)
	}
}

func intsString(a []int) string {
	s := make([]string, len(a))
	for i, n := range a {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, " ")
}

// TestQemuImg: real clients on the view. qemu-img compare of a raw image
// exposed with a delta, after qemu-io wrote into it, against a plain file
// that took the same writes; a qcow2 image written and checked through
// the view; a qcow2 overlay on a read-only view leaves the layer as it was.
func TestQemuImg(t *testing.T) {
	needFUSE(t)
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (Debian qemu-utils): %v", tool, err)
		}
	}
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	l, want := diskLayer(t, 12<<20, chunk.DefaultParams(), "disk.raw", nil)
	v := mount(t, l, Config{DeltaDir: t.TempDir(), Base: "v1"})
	disk := filepath.Join(v.Dir(), "disk.raw")
	plain := filepath.Join(t.TempDir(), "plain.raw")
	must(t, os.WriteFile(plain, want, 0o600))
	for _, img := range []string{disk, plain} {
		run("qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 64k", "-c", "write -P 0x11 4095 2", "-c", "write -z 6M 128k", img)
	}
	run("qemu-img", "compare", "-f", "raw", "-F", "raw", disk, plain)

	// a qcow2 image inside a layer, grown and checked through the view
	q, _ := diskLayer(t, 0, chunk.DefaultParams(), "", func(dir string) []byte {
		run("qemu-img", "create", "-q", "-f", "qcow2", filepath.Join(dir, "vm.qcow2"), "64M")
		return nil
	})
	qv := mount(t, q, Config{DeltaDir: t.TempDir(), Base: "q1"})
	img := filepath.Join(qv.Dir(), "vm.qcow2")
	run("qemu-io", "-f", "qcow2", "-c", "write -P 0x77 3M 256k", img)
	run("qemu-img", "check", "-q", "-f", "qcow2", img)
	run("qemu-io", "-f", "qcow2", "-c", "read -P 0x77 3M 256k", img)

	// a hypervisor's own overlay on a read-only view
	ro := mount(t, l, Config{})
	base := filepath.Join(ro.Dir(), "disk.raw")
	ovl := filepath.Join(t.TempDir(), "vm.qcow2")
	run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", ovl)
	run("qemu-io", "-f", "qcow2", "-c", "write -P 0x42 2M 64k", ovl)
	run("qemu-io", "-f", "qcow2", "-c", "read -P 0x42 2M 64k", ovl)
	sameFile(t, base, filepath.Join(l.src, "disk.raw"))
}
