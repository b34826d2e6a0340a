package fuseview

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestDiskFallocate: a discard (punch hole) and a write-zeroes (zero
// range) of a disk image read as zeros after, whole blocks without disk in
// the delta, partial ones written, across a remount; reserving space is
// refused (EOPNOTSUPP), and a zero range may grow the file.
func TestDiskFallocate(t *testing.T) {
	needFUSE(t)
	l, want := diskLayer(t, 8<<20, fixedParams(t), "disk.raw", nil)
	deltas := t.TempDir()
	v, err := Mount(t.TempDir(), l.m, Config{Store: l.store, DeltaDir: deltas, Base: "v1", Name: "p2pimg-test"})
	must(t, err)
	disk := filepath.Join(v.Dir(), "disk.raw")
	data := filepath.Join(deltas, "disk.raw", "data")
	f, err := os.OpenFile(disk, os.O_RDWR, 0)
	must(t, err)
	fd := int(f.Fd())

	// Written first, then discarded: the delta gives the disk back.
	block := bytes.Repeat([]byte{0x77}, 64<<10)
	_, err = f.WriteAt(block, 1<<20)
	must(t, err)
	must(t, f.Sync())
	written := blocksOf(t, data)
	must(t, unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 1<<20, 64<<10))
	clear(want[1<<20 : 1<<20+64<<10])
	must(t, f.Sync())
	if got := blocksOf(t, data); got > written-(64<<10)/512 {
		t.Fatalf("the delta holds %d sectors after discarding 64 KiB of the %d written, want at most %d", got, written, written-(64<<10)/512)
	}
	// Unaligned: the partial blocks at both ends are written, the layer's
	// bytes around them kept.
	must(t, unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, 3<<20+100, 3*4096))
	clear(want[3<<20+100 : 3<<20+100+3*4096])
	must(t, unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 5<<20+10, 20))
	clear(want[5<<20+10 : 5<<20+30])
	// Past the end with KEEP_SIZE: nothing; without: the file grows.
	must(t, unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 8<<20-4096, 8192))
	clear(want[8<<20-4096:])
	must(t, unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE, 8<<20, 4096))
	want = append(want, make([]byte, 4096)...)
	if err := unix.Fallocate(fd, 0, 0, 4096); !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Fatalf("reserving space: %v, want EOPNOTSUPP", err)
	}
	must(t, f.Close())
	sameBytes(t, disk, want)
	must(t, v.Unmount())
	v2, err := Mount(t.TempDir(), l.m, Config{Store: l.store, DeltaDir: deltas, Base: "v1", Name: "p2pimg-test"})
	must(t, err)
	sameBytes(t, filepath.Join(v2.Dir(), "disk.raw"), want)
	must(t, v2.Unmount())
}
