package policysync

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/badgerstore/badgertest"
	"github.com/p2pimg/p2pimg/node/gossip"
	"github.com/p2pimg/p2pimg/node/notify"
)

// TestPassOnlyOnChange: the syncer's pass runs first, on a kick, on a
// change to the store's layers (and sees that change), and on the retry
// interval only while a held layer waits; with nothing changed it does
// not run, however long the host idles.
func TestPassOnlyOnChange(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := badgertest.Open(t)
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	sv, err := New(Config{ID: id, Key: key, Catalog: gossip.NewCatalog(), Store: db,
		Log: slog.New(slog.DiscardHandler), Announce: notify.New(), Reconcile: notify.New()})
	if err != nil {
		t.Fatal(err)
	}
	var st passState
	now := time.Now()
	steps := []struct {
		what   string
		before func()
		kicked bool
		later  time.Duration
		want   bool
	}{
		{what: "first pass", want: true},
		{what: "nothing changed", want: false},
		{what: "nothing changed, nothing waiting, past the retry interval", later: policyRetry + time.Second, want: false},
		{what: "kicked", kicked: true, want: true},
		{what: "a layer written", before: func() {
			if err := db.PutLayer(ctx, chunk.Layer{Name: "web:1", CID: "cid-web", State: chunk.Complete}); err != nil {
				t.Fatal(err)
			}
		}, want: true},
		{what: "nothing changed after the write", want: false},
		{what: "a layer deleted", before: func() {
			n, _ := chunk.ParseName("web:1")
			if err := db.DeleteLayer(ctx, n); err != nil {
				t.Fatal(err)
			}
		}, want: true},
		{what: "a held layer waiting, before the retry interval", before: func() { st.waiting = true }, later: time.Second, want: false},
		{what: "a held layer waiting, past the retry interval", later: policyRetry + time.Second, want: true},
	}
	for _, s := range steps {
		if s.before != nil {
			s.before()
		}
		now = now.Add(s.later)
		if got := sv.maybePass(ctx, &st, s.kicked, now); got != s.want {
			t.Fatalf("%s: pass ran %v, want %v", s.what, got, s.want)
		}
		if s.what == "a layer written" && !sv.facts(ctx)[id].held["cid-web"] {
			t.Fatal("the pass after a layer was written does not see it held")
		}
	}
}
