package badgerstore

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/ipfs/go-cid"
	"golang.org/x/sys/unix"

	"github.com/p2pimg/p2pimg/chunk"

	"github.com/p2pimg/p2pimg/chunk/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Storage {
		db, err := Open(t.TempDir(), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	})
}

func TestSecondOpenFails(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	db, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if db2, err := Open(dir, nil); err == nil {
		db2.Close()
		t.Fatal("a second Open of the same directory succeeded")
	}
}

func fill(seed, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(seed*131 + i*7 + i>>9)
	}
	return b
}

func TestCompactReclaimsAndKeepsLiveChunks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	db, err := OpenWith(dir, Options{PackSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	var ids []cid.Cid
	for i := range 60 {
		b, _ := chunk.Sum(fill(i, 100<<10), chunk.SHA256)
		if err := db.Put(ctx, b); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, b.CID())
	}
	allocBefore := packBlocks(t, dir)
	var drop, keep []cid.Cid
	for i, id := range ids {
		if i%4 == 0 {
			keep = append(keep, id)
		} else {
			drop = append(drop, id)
		}
	}
	if err := db.Delete(ctx, drop...); err != nil {
		t.Fatal(err)
	}
	freed, err := db.Compact(ctx)
	if err != nil {
		t.Fatal(err)
	}
	allocAfter := packBlocks(t, dir)
	if freed < 3<<20 || allocBefore-allocAfter < 3<<20 {
		t.Fatalf("compact reported %d bytes freed; packs' st_blocks %d -> %d bytes", freed, allocBefore, allocAfter)
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
		if st, _ := db.Stats(ctx, nil); st.Chunks != int64(len(keep)) {
			t.Fatalf("%d chunks after compact, want %d", st.Chunks, len(keep))
		}
	}
	check(db)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = OpenWith(dir, Options{PackSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	check(db)
}

// A crash in the middle of a pack write leaves a torn record at the end of
// the active pack; it is never indexed, and later writes follow it.
func TestTornPackTailIsHarmless(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	db, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := chunk.Sum(fill(1, 5000), chunk.SHA256)
	if err := db.Put(ctx, a); err != nil {
		t.Fatal(err)
	}
	db.Close()
	packs, _ := filepath.Glob(filepath.Join(dir, "packs", "*.pack"))
	f, err := os.OpenFile(packs[len(packs)-1], os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte{36, 1, 2, 3}) // the start of a record, cut short
	f.Close()
	db, err = Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	b, _ := chunk.Sum(fill(2, 7000), chunk.SHA256)
	if err := db.Put(ctx, b); err != nil {
		t.Fatal(err)
	}
	for _, blk := range []chunk.Block{a, b} {
		got, err := db.Get(ctx, blk.CID())
		if err != nil || string(got) != string(blk.Data()) {
			t.Fatalf("chunk %s after torn tail: %v", blk.CID(), err)
		}
	}
}

func TestRecords(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	db, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"a/x": "1", "a/y": "2", "b/z": "3"} {
		if err := db.PutRecord(k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	db.DeleteRecord("a/y")
	db.DeleteRecord("a/absent")
	db.Close()
	db, _ = Open(dir, nil)
	defer db.Close()
	got, err := db.Records("a/")
	if err != nil || len(got) != 1 || string(got["a/x"]) != "1" {
		t.Fatalf("records after reopen: %v %v", got, err)
	}
}

// A layer record is written only after the packs holding its chunks are
// synced, and packs that fill up are synced while writing goes on.
// smallPacks opens a store in dir with 1 MiB packs, and makes 40 chunks of
// 64 KiB to fill several of them.
func smallPacks(t *testing.T, dir string) (*DB, []chunk.Block) {
	t.Helper()
	db, err := OpenWith(dir, Options{PackSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	var blocks []chunk.Block
	for i := range 40 {
		b, _ := chunk.Sum(fill(i, 64<<10), chunk.SHA256)
		blocks = append(blocks, b)
	}
	return db, blocks
}

func TestPutLayerSyncsPacks(t *testing.T) {
	t.Parallel()
	db, blocks := smallPacks(t, t.TempDir())
	ctx := context.Background()
	for _, b := range blocks {
		if err := db.Put(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	db.packs.mu.Lock()
	dirty := len(db.packs.dirty)
	db.packs.mu.Unlock()
	if dirty != 1 {
		t.Fatalf("%d packs dirty after filling several: full packs should be synced in the background, leaving only the active one", dirty)
	}
	if err := db.PutLayer(ctx, chunk.Layer{Name: "x:1", CID: "c", State: chunk.Complete}); err != nil {
		t.Fatal(err)
	}
	db.packs.mu.Lock()
	dirty = len(db.packs.dirty)
	db.packs.mu.Unlock()
	if dirty != 0 {
		t.Fatalf("%d packs still dirty after a layer was recorded", dirty)
	}
}

// resident counts the pages of a file that are in the page cache.
func resident(t *testing.T, path string) (in, total int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	if fi.Size() == 0 {
		return 0, 0
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (len(m)+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatal(errno)
	}
	for _, v := range vec {
		if v&1 != 0 {
			in++
		}
	}
	return in, len(vec)
}

// Chunks stored with PutUncached (a fetch) read back like any others, and
// once Sync has made them durable their pages are out of the page cache.
func TestPutUncachedLeavesPageCache(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) == nil && st.Type == unix.TMPFS_MAGIC {
		t.Skip("tmpfs pages cannot leave the page cache")
	}
	db, blocks := smallPacks(t, dir)
	ctx := context.Background()
	for i := 0; i < len(blocks); i += 4 {
		if err := db.PutUncached(ctx, blocks[i:i+4]...); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Sync(); err != nil {
		t.Fatal(err)
	}
	packs, _ := filepath.Glob(filepath.Join(dir, "packs", "*.pack"))
	if len(packs) < 3 {
		t.Fatalf("%d packs, want several", len(packs))
	}
	for _, p := range packs {
		if in, total := resident(t, p); in > 0 {
			t.Errorf("%s: %d of %d pages still cached after the sync", filepath.Base(p), in, total)
		}
	}
	for _, b := range blocks {
		got, err := db.Get(ctx, b.CID())
		if err != nil || !bytes.Equal(got, b.Data()) {
			t.Fatalf("chunk %s after PutUncached: %v", b.CID(), err)
		}
	}
}
