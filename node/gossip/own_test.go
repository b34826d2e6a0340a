package gossip

import (
	"context"
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/badgerstore"
	"github.com/p2pimg/p2pimg/chunk/badgerstore/badgertest"
	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/node/notify"
	"github.com/p2pimg/p2pimg/node/p2p"
)

// countedStore is the real store, counting its listings.
type countedStore struct {
	*badgerstore.DB
	lists int
}

func (s *countedStore) Layers(ctx context.Context) ([]chunk.Layer, error) {
	s.lists++
	return s.DB.Layers(ctx)
}

// TestOwnHoldingsFollowTheStore: this host's holding records follow its
// layers on the next restatement; while the store's layers are unchanged
// a restatement lists them no more.
func TestOwnHoldingsFollowTheStore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := badgertest.Open(t)
	st := &countedStore{DB: db}
	c := cluster.Default()
	key, _ := testKey(t)
	h, err := p2p.NewHost(key, []string{"/ip4/127.0.0.1/tcp/0"}, c, p2p.NewGater(c, time.Now, slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	cat := NewCatalog()
	svc := New(Config{Host: h, Key: key, Cluster: c, Catalog: cat, Store: st, Log: slog.New(slog.DiscardHandler),
		Interval: time.Second, Announce: notify.New(), Activations: notify.New(),
		HostPolicy: func() json.RawMessage { return nil }, States: func() []HostState { return nil },
		UnreachableAfter: time.Minute, GoneAfter: time.Hour, Reg: prometheus.NewRegistry()})
	a := manifestID(t)
	m := &chunk.Manifest{Params: chunk.DefaultParams(), Entries: []chunk.Entry{{Path: "e", Type: chunk.Dir}}}
	_, bid, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	b := bid.String()
	holds := func(id string) (complete, ok bool) {
		r, ok := cat.stated(h.ID(), KindHolding, id)
		if !ok || len(r.Data) == 0 {
			return false, false
		}
		var hd holding
		if err := json.Unmarshal(r.Data, &hd); err != nil {
			t.Fatal(err)
		}
		return hd.Complete, true
	}
	steps := []struct {
		what      string
		change    func() error
		lists     int // listings so far
		a, b      bool
		completeA bool
	}{
		{what: "empty store", lists: 1},
		{what: "a complete layer", change: func() error {
			return db.PutLayer(ctx, chunk.Layer{Name: "web:1", CID: a, State: chunk.Complete})
		}, lists: 2, a: true, completeA: true},
		{what: "unchanged", lists: 2, a: true, completeA: true},
		{what: "a second, incomplete layer", change: func() error {
			return db.PutLayer(ctx, chunk.Layer{Name: "db:1", CID: b, State: chunk.Incomplete})
		}, lists: 3, a: true, b: true, completeA: true},
		{what: "the first deleted", change: func() error {
			n, _ := chunk.ParseName("web:1")
			return db.DeleteLayer(ctx, n)
		}, lists: 4, b: true},
		{what: "unchanged again", lists: 4, b: true},
	}
	for _, s := range steps {
		if s.change != nil {
			if err := s.change(); err != nil {
				t.Fatal(err)
			}
		}
		if err := svc.state(ctx); err != nil {
			t.Fatal(err)
		}
		completeA, hasA := holds(a)
		_, hasB := holds(b)
		if st.lists != s.lists || hasA != s.a || hasB != s.b || completeA != s.completeA {
			t.Fatalf("%s: %d listings, holds a %v (complete %v), b %v; want %d, %v (%v), %v",
				s.what, st.lists, hasA, completeA, hasB, s.lists, s.a, s.completeA, s.b)
		}
	}
}
