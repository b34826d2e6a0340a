package badgerstore

import (
	"context"
	"fmt"
	"testing"

	"github.com/p2pimg/p2pimg/chunk"
)

// TestLayersCache: a listing of an unchanged store decodes no record
// again; a write or a deletion is seen by the next listing, and a
// caller changing what it was given does not change the next listing.
func TestLayersCache(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, err := Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	put := func(name string, st chunk.LayerState) {
		t.Helper()
		if err := db.PutLayer(ctx, chunk.Layer{Name: name, CID: "cid-" + name, State: st, Policy: []byte(`{}`)}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		put(fmt.Sprintf("l%d:1", i), chunk.Complete)
	}
	list := func() []chunk.Layer {
		t.Helper()
		ls, err := db.Layers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return ls
	}
	name := func(s string) chunk.Name {
		n, err := chunk.ParseName(s)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	decodes := func() int64 { return db.layers.decodes.Load() }

	if ls := list(); len(ls) != 3 || decodes() != 3 {
		t.Fatalf("first listing: %d layers, %d decodes; want 3 and 3", len(ls), decodes())
	}
	gen := db.LayerGen()
	ls := list()
	if len(ls) != 3 || decodes() != 3 || db.LayerGen() != gen {
		t.Fatalf("unchanged store: %d layers, %d decodes, gen %d -> %d; want 3 layers and no decode", len(ls), decodes(), gen, db.LayerGen())
	}
	ls[0].Name, ls[0].Policy[0] = "edited", 'x'
	if again := list(); again[0].Name != "l0:1" || string(again[0].Policy) != `{}` {
		t.Fatalf("a caller's edit reached the store's listing: %+v", again[0])
	}

	put("l1:1", chunk.Incomplete)
	if db.LayerGen() == gen {
		t.Fatal("a layer write left the generation unchanged")
	}
	if ls := list(); ls[1].State != chunk.Incomplete || decodes() != 6 {
		t.Fatalf("after a write: l1 is %s after %d decodes; want %s, read again once (6)", ls[1].State, decodes(), chunk.Incomplete)
	}
	if err := db.DeleteLayer(ctx, name("l0:1")); err != nil {
		t.Fatal(err)
	}
	if ls := list(); len(ls) != 2 || ls[0].Name != "l1:1" {
		t.Fatalf("after a deletion: %v", ls)
	}
	if err := db.DeleteLayer(ctx, name("l0:1")); err == nil {
		t.Fatal("deleting an absent layer succeeded")
	}
	if ls := list(); len(ls) != 2 {
		t.Fatalf("after a failed deletion: %d layers, want 2", len(ls))
	}
}
