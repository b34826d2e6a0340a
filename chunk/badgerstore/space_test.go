package badgerstore

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ipfs/go-cid"
	"golang.org/x/sys/unix"

	"github.com/p2pimg/p2pimg/chunk"
)

// packBlocks is the disk the packs under a store directory take (st_blocks).
func packBlocks(t *testing.T, dir string) int64 {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, "packs"))
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, e := range ents {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(dir, "packs", e.Name()), &st); err != nil {
			t.Fatal(err)
		}
		total += st.Blocks * 512
	}
	return total
}

// gc's Compact gives the disk of deleted chunks back: st_blocks of the
// packs shrink by about what was deleted, a pack with nothing live goes,
// stats' dead bytes fall to block slack, and every live chunk still reads
// back, also after a reopen.
func TestCompactPunchesDeadRanges(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	db, err := OpenWith(dir, Options{PackSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { db.Close() }()
	var ids []cid.Cid
	for i := range 40 {
		b, _ := chunk.Sum(fill(i+1000, 100<<10+i), chunk.SHA256)
		if err := db.Put(ctx, b); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, b.CID())
	}
	if err := db.Sync(); err != nil {
		t.Fatal(err)
	}
	// Pack 1 loses every chunk; in the others every third chunk stays.
	inPack1 := map[cid.Cid]bool{}
	db.walkIndex(ctx, func(id cid.Cid, l loc) error { inPack1[id] = l.pack == 1; return nil })
	var drop, keep []cid.Cid
	var dropped int64
	for i, id := range ids {
		if inPack1[id] || i%3 != 0 {
			drop = append(drop, id)
			dropped += int64(100<<10 + i)
		} else {
			keep = append(keep, id)
		}
	}
	if err := db.Delete(ctx, drop...); err != nil {
		t.Fatal(err)
	}
	st, err := db.Stats(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.DeadBytes < dropped || st.AllocatedBytes < st.StoredBytes+st.DeadBytes {
		t.Fatalf("before compact: %+v; deleted %d bytes", st, dropped)
	}
	before := packBlocks(t, dir)
	freed, err := db.Compact(ctx)
	if err != nil {
		t.Fatal(err)
	}
	after := packBlocks(t, dir)
	nums, _ := db.packs.list()
	// Each hole loses at most a block at either end to live neighbours.
	slack := int64(len(keep)+len(nums))*2*punchBlock + int64(len(nums))*punchBlock
	t.Logf("deleted %d bytes; st_blocks %d -> %d; compact reported %d", dropped, before, after, freed)
	if before-after < dropped-slack || freed != before-after {
		t.Fatalf("st_blocks %d -> %d (%d given back), deleted %d, compact reported %d", before, after, before-after, dropped, freed)
	}
	if _, err := os.Stat(db.packs.path(1)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pack 1 holds no live chunk and is still there: %v", err)
	}
	st, err = db.Stats(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.DeadBytes > slack || st.AllocatedBytes != after {
		t.Fatalf("after compact: %+v (st_blocks %d, slack %d)", st, after, slack)
	}
	check := func(db *DB) {
		for _, id := range keep {
			data, err := db.Get(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := chunk.Verify(id, data); err != nil {
				t.Fatal(err)
			}
		}
	}
	check(db)
	// Compact again: nothing more to give back, nothing live touched.
	if freed, err := db.Compact(ctx); err != nil || freed != 0 {
		t.Fatalf("second compact: %d, %v", freed, err)
	}
	db.Close()
	if db, err = OpenWith(dir, Options{PackSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	check(db)
	// New writes after the holes read back too.
	b, _ := chunk.Sum(fill(7, 300<<10), chunk.SHA256)
	if err := db.Put(ctx, b); err != nil {
		t.Fatal(err)
	}
	if data, err := db.Get(ctx, b.CID()); err != nil || len(data) != 300<<10 {
		t.Fatalf("put after compact: %d bytes, %v", len(data), err)
	}
}

// Reserve refuses a write larger than the disk's free space, naming the
// bytes needed, the bytes free and the directory. On a small tmpfs it is
// exact, and the refused write indeed does not fit; without root it
// checks the refusal against the real disk.
func TestReserveRefusesEarlyWithNumbers(t *testing.T) {
	// Not parallel: a child forked for mount holds copies of other tests'
	// descriptors until it execs, badger's directory lock among them.
	dir := t.TempDir()
	small := false
	if os.Geteuid() == 0 {
		mnt := filepath.Join(dir, "small")
		os.Mkdir(mnt, 0o700)
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", mnt).CombinedOutput(); err == nil {
			t.Cleanup(func() { exec.Command("umount", mnt).Run() })
			dir, small = mnt, true
		} else {
			t.Logf("no small tmpfs (%v %s): checking against the real disk", err, out)
		}
	}
	db, err := OpenWith(dir, Options{Reserve: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	if err := db.Reserve(free / 2); err != nil && free > 4<<20 {
		t.Fatalf("half of %d free bytes refused: %v", free, err)
	}
	need := free + 1<<20
	err = db.Reserve(need)
	if !errors.Is(err, chunk.ErrNoSpace) {
		t.Fatalf("reserve of %d with %d free: %v", need, free, err)
	}
	msg := err.Error()
	for _, want := range []string{dir, "(" + strconv.FormatInt(need, 10) + " bytes)", "bytes) free", "reserve of 1.0 MiB"} {
		if !strings.Contains(msg, want) {
			t.Fatalf("refusal %q does not name %q", msg, want)
		}
	}
	if small {
		// Filling the tmpfs: what Reserve refused cannot be written.
		b, _ := chunk.Sum(fill(1, int(need)), chunk.SHA256)
		if err := db.Put(context.Background(), b); !errors.Is(err, unix.ENOSPC) {
			t.Fatalf("writing the %d bytes refused: %v", need, err)
		}
		// Nothing of it stays: the pack is cut back, and a write that fits goes through.
		small, _ := chunk.Sum(fill(2, 64<<10), chunk.SHA256)
		if err := db.Put(context.Background(), small); err != nil {
			t.Fatalf("a small write after ENOSPC: %v", err)
		}
		if st, err := db.Stats(context.Background(), nil); err != nil || st.Chunks != 1 || st.AllocatedBytes > 1<<20 {
			t.Fatalf("after ENOSPC: %+v, %v", st, err)
		}
	}
}

// TestOpenRefusesFullDisk: on a disk too full for badger's mapped files
// the store refuses to open, naming the numbers, instead of the process
// dying of SIGBUS.
func TestOpenRefusesFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounts a small tmpfs: run as root")
	}
	mnt := filepath.Join(t.TempDir(), "full")
	os.Mkdir(mnt, 0o700)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("no small tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	_, err := OpenWith(filepath.Join(mnt, "store"), Options{})
	if !errors.Is(err, chunk.ErrNoSpace) || !strings.Contains(err.Error(), "bytes free") {
		t.Fatalf("open on a 2 MiB disk: %v, want refused for space with the numbers", err)
	}
}
