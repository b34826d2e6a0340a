package fetch

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/badgerstore"
	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/node/gossip"
	"github.com/p2pimg/p2pimg/node/p2p"
)

// TestManifestDecodedOnce: a manifest asked for again comes from the
// decoded cache, as a copy the caller may change, and only while the
// store still has it (gc or rm may remove it meanwhile).
func TestManifestDecodedOnce(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.DiscardHandler)
	db, err := badgerstore.Open(filepath.Join(t.TempDir(), "store"), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	net, err := p2p.Open(key, []string{"/ip4/127.0.0.1/tcp/0"}, cluster.Default(), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { net.Host.Close() })
	fr := New(Config{Host: net.Host, Store: db, Catalog: gossip.NewCatalog(), Gater: net.Gater, Stats: net.Stats,
		Pins: noPins{}, Log: log, StallTimeout: time.Minute, Reg: prometheus.NewRegistry()})

	c1, _ := chunk.SumCID([]byte("one"), chunk.SHA256)
	c2, _ := chunk.SumCID([]byte("two"), chunk.SHA256)
	m := &chunk.Manifest{Params: chunk.DefaultParams(), Entries: []chunk.Entry{
		{Path: "disk.img", Type: chunk.File, Mode: 0o644, Size: 6, Chunks: []chunk.Ref{{CID: c1, Size: 3}, {CID: c2, Size: 3}}},
	}}
	data, id, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := db.PutManifest(ctx, id, data); err != nil {
		t.Fatal(err)
	}
	first, err := fr.Manifest(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := fr.decoded.Get(id); !ok {
		t.Fatal("a decoded manifest is not kept")
	}
	first.Entries[0].Chunks[0].Size = 99 // the caller's copy
	first.Entries[0].Path = "other"
	again, err := fr.Manifest(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if got, gotID, err := again.Encode(); err != nil || gotID != id || string(got) != string(data) {
		t.Fatalf("second answer is not the stored manifest (%v): a caller's change reached the cache", err)
	}
	again.Entries[0].Chunks[1].Size = 77 // a copy from the cache, changed
	third, err := fr.Manifest(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if third.Entries[0].Chunks[1].Size != 3 {
		t.Fatal("a copy handed out from the cache is the cached manifest itself")
	}
	if err := db.DeleteManifest(ctx, id); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := fr.Manifest(cctx, id); !errors.Is(err, chunk.ErrNotFound) {
		t.Fatalf("manifest removed from the store: %v; want chunk.ErrNotFound (not the cached copy)", err)
	}
}
