// Package storetest is the conformance suite every chunk.Store and
// chunk.Catalog implementation runs.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/ipfs/go-cid"

	"github.com/p2pimg/p2pimg/chunk"
)

// Storage is what the suite tests.
type Storage interface {
	chunk.Store
	chunk.Catalog
}

func block(t *testing.T, seed uint64, n int) chunk.Block {
	t.Helper()
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 1})
	data := make([]byte, n)
	r.Read(data)
	b, err := chunk.Sum(data, chunk.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Run runs the suite. open returns a fresh, empty store.
func Run(t *testing.T, open func(t *testing.T) Storage) {
	ctx := context.Background()
	t.Run("PutGetHas", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		a, b := block(t, 1, 65536), block(t, 2, 100)
		if ok, err := s.Has(ctx, a.CID()); err != nil || ok {
			t.Fatalf("Has on empty store = %v, %v", ok, err)
		}
		if _, err := s.Get(ctx, a.CID()); !errors.Is(err, chunk.ErrNotFound) {
			t.Fatalf("Get absent: %v, want ErrNotFound", err)
		}
		if err := s.Put(ctx, a, b); err != nil {
			t.Fatal(err)
		}
		if err := s.Put(ctx, a); err != nil { // idempotent
			t.Fatal(err)
		}
		got, err := s.Get(ctx, a.CID())
		if err != nil || string(got) != string(a.Data()) {
			t.Fatalf("Get = %d bytes, %v", len(got), err)
		}
		got[0] ^= 0xff // the caller's copy: must not change the store
		if again, _ := s.Get(ctx, a.CID()); string(again) != string(a.Data()) {
			t.Fatal("Get returned the store's own buffer")
		}
		buf := make([]byte, 0, 65536)
		into, err := s.GetInto(ctx, b.CID(), buf)
		if err != nil || string(into) != string(b.Data()) || &into[0] != &buf[:1][0] {
			t.Fatalf("GetInto a buffer with room = %d bytes, %v (its own storage: %v)", len(into), err, err == nil && &into[0] == &buf[:1][0])
		}
		if into, err := s.GetInto(ctx, a.CID(), make([]byte, 0, 10)); err != nil || string(into) != string(a.Data()) {
			t.Fatalf("GetInto a small buffer = %d bytes, %v", len(into), err)
		}
		c := block(t, 3, 10)
		has, err := s.HasMany(ctx, []cid.Cid{b.CID(), c.CID(), a.CID()})
		if err != nil || fmt.Sprint(has) != "[true false true]" {
			t.Fatalf("HasMany = %v, %v", has, err)
		}
	})
	t.Run("DeleteIdempotent", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		a := block(t, 4, 1000)
		if err := s.Put(ctx, a); err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(ctx, a.CID(), block(t, 5, 1).CID()); err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(ctx, a.CID()); err != nil {
			t.Fatal(err)
		}
		if ok, _ := s.Has(ctx, a.CID()); ok {
			t.Fatal("deleted chunk still present")
		}
	})
	t.Run("WalkAndStats", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		want := map[cid.Cid]int{}
		var total int64
		for i := range 50 {
			b := block(t, uint64(100+i), 1+i*1500)
			want[b.CID()] = len(b.Data())
			total += int64(len(b.Data()))
			if err := s.Put(ctx, b); err != nil {
				t.Fatal(err)
			}
		}
		seen := 0
		err := s.Walk(ctx, true, func(id cid.Cid, size int, data []byte) error {
			seen++
			if want[id] != size || len(data) != size {
				return fmt.Errorf("walk %s: size %d data %d, want %d", id, size, len(data), want[id])
			}
			if _, err := chunk.Verify(id, data); err != nil {
				return err
			}
			return nil
		})
		if err != nil || seen != len(want) {
			t.Fatalf("walk saw %d of %d: %v", seen, len(want), err)
		}
		st, err := s.Stats(ctx, nil)
		if err != nil || st.Chunks != int64(len(want)) {
			t.Fatalf("stats %+v, %v", st, err)
		}
		if st.StoredBytes != total {
			t.Fatalf("stats stored %d bytes, want %d", st.StoredBytes, total)
		}
		// Chunks a keep function refuses are counted, and their bytes are dead.
		var refused int64
		half := func(id cid.Cid) bool { return want[id]%3000 != 1 } // refuses every other chunk put
		for _, n := range want {
			if n%3000 == 1 {
				refused += int64(n)
			}
		}
		// A store that reports allocation reads it from the file system,
		// which may settle a pack's blocks between two calls: dead bytes
		// are compared net of what is allocated.
		net := func(x chunk.StoreStats) int64 { return x.DeadBytes - x.AllocatedBytes }
		all, err := s.Stats(ctx, func(cid.Cid) bool { return true })
		if err != nil || all.Chunks != st.Chunks || all.StoredBytes != st.StoredBytes || net(all) != net(st) {
			t.Fatalf("stats keeping everything %+v, %v; want %+v as without keep", all, err, st)
		}
		some, err := s.Stats(ctx, half)
		if err != nil || some.Chunks != st.Chunks || some.StoredBytes != st.StoredBytes || net(some) != net(st)+refused {
			t.Fatalf("stats refusing %d bytes: %+v, %v; without keep %+v", refused, some, err, st)
		}
	})
	t.Run("ConcurrentPuts", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Go(func() {
				for i := range 20 {
					if err := s.Put(ctx, block(t, uint64(i%10), 4096), block(t, uint64(1000+g*20+i), 512)); err != nil {
						t.Error(err)
					}
				}
			})
		}
		wg.Wait()
		if st, _ := s.Stats(ctx, nil); st.Chunks != 10+80 {
			t.Fatalf("chunks %d, want 90", st.Chunks)
		}
		if err := s.Sync(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("Catalog", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		a := block(t, 7, 300)
		m := &chunk.Manifest{Params: chunk.DefaultParams(), Entries: []chunk.Entry{
			{Path: "f", Type: chunk.File, Mode: 0o644, Size: 300, Chunks: []chunk.Ref{{CID: a.CID(), Size: 300}}},
		}}
		data, id, err := m.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetManifest(ctx, id); !errors.Is(err, chunk.ErrNotFound) {
			t.Fatalf("absent manifest: %v", err)
		}
		if err := s.PutManifest(ctx, id, data); err != nil {
			t.Fatal(err)
		}
		got, err := s.GetManifest(ctx, id)
		if err != nil || got.Entries[0].Path != "f" {
			t.Fatalf("GetManifest: %v", err)
		}
		if raw, err := s.ManifestBytes(ctx, id); err != nil || string(raw) != string(data) {
			t.Fatalf("ManifestBytes = %d bytes, %v; want the %d stored", len(raw), err, len(data))
		}
		if _, err := s.ManifestBytes(ctx, a.CID()); !errors.Is(err, chunk.ErrNotFound) {
			t.Fatalf("ManifestBytes of an absent manifest: %v", err)
		}
		if ids, err := s.Manifests(ctx); err != nil || len(ids) != 1 || !ids[0].Equals(id) {
			t.Fatalf("Manifests = %v, %v", ids, err)
		}
		n, _ := chunk.ParseName("web:1")
		if _, err := s.GetLayer(ctx, n); !errors.Is(err, chunk.ErrNotFound) {
			t.Fatalf("absent layer: %v", err)
		}
		for _, l := range []chunk.Layer{{Name: "web:1", CID: id.String(), State: chunk.Incomplete}, {Name: "web:1", CID: id.String(), State: chunk.Complete}, {Name: "app:latest", CID: id.String(), State: chunk.Complete}} {
			if err := s.PutLayer(ctx, l); err != nil {
				t.Fatal(err)
			}
		}
		if l, err := s.GetLayer(ctx, n); err != nil || l.State != chunk.Complete {
			t.Fatalf("GetLayer = %+v, %v", l, err)
		}
		ls, err := s.Layers(ctx)
		if err != nil || len(ls) != 2 || ls[0].Name != "app:latest" {
			t.Fatalf("Layers = %+v, %v", ls, err)
		}
		if err := s.DeleteLayer(ctx, n); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteLayer(ctx, n); !errors.Is(err, chunk.ErrNotFound) {
			t.Fatalf("second delete: %v", err)
		}
		if err := s.PutLayer(ctx, chunk.Layer{Name: "Bad Name"}); err == nil {
			t.Fatal("PutLayer accepted an invalid name")
		}
	})
}
