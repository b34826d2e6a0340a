package fuseview

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestDiskWritesKeepReserve: writes into a disk image stop with ENOSPC
// while the delta's disk still has its reserve free (the store, its index
// and the daemon's records share that disk), and go on once space is
// freed.
func TestDiskWritesKeepReserve(t *testing.T) {
	needFUSE(t)
	small := t.TempDir()
	if err := syscall.Mount("tmpfs", small, "tmpfs", 0, "size=4m"); err != nil {
		t.Skipf("cannot mount a tmpfs for the delta: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(small, syscall.MNT_DETACH) }) // after the view's unmount
	const reserve = 1 << 20
	l, _ := diskLayer(t, 16<<20, fixedParams(t), "disk.raw", nil)
	v := mount(t, l, Config{DeltaDir: filepath.Join(small, "deltas"), Base: "v1", Reserve: reserve})
	w, err := os.OpenFile(filepath.Join(v.Dir(), "disk.raw"), os.O_RDWR, 0)
	must(t, err)
	defer w.Close()
	block := bytes.Repeat([]byte{9}, 64<<10)
	var off int64
	for ; ; off += int64(len(block)) {
		if off >= 16<<20 {
			t.Fatal("writes never stopped")
		}
		if _, err = w.WriteAt(block, off); err != nil {
			break
		}
	}
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("a write into the reserve: %v, want ENOSPC", err)
	}
	var st syscall.Statfs_t
	must(t, syscall.Statfs(small, &st))
	if free := int64(st.Bavail) * st.Bsize; free < reserve-int64(len(block)) {
		t.Fatalf("%d bytes free when writes stopped, want about the %d reserved", free, reserve)
	}
	must(t, syscall.Mount("", small, "tmpfs", syscall.MS_REMOUNT, "size=8m"))
	if _, err := w.WriteAt(block, off); err != nil {
		t.Fatalf("a write once space was freed: %v", err)
	}
}
