package badgerstore

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/ipfs/go-cid"

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
	before, _ := db.packs.list()
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
	after, _ := db.packs.list()
	if freed < 3<<20 || len(after) >= len(before) {
		t.Fatalf("compact freed %d bytes, packs %d -> %d", freed, len(before), len(after))
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
		if st, _ := db.Stats(ctx); st.Chunks != int64(len(keep)) {
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
func TestPutLayerSyncsPacks(t *testing.T) {
	t.Parallel()
	db, err := OpenWith(t.TempDir(), Options{PackSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	var blocks []chunk.Block
	for i := range 40 { // 40 x 64 KiB: several packs of 1 MiB
		b, _ := chunk.Sum(bytes.Repeat([]byte{byte(i), 1}, 32<<10), chunk.SHA256)
		blocks = append(blocks, b)
	}
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
