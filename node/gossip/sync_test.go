package gossip

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/node/notify"
	"github.com/p2pimg/p2pimg/node/p2p"
)

type noLayers struct{}

func (noLayers) Layers(context.Context) ([]chunk.Layer, error) { return nil, nil }
func (noLayers) LayerGen() uint64                              { return 0 }

// testHost is a catalogue service on a real libp2p host on 127.0.0.1.
type testHost struct {
	h   host.Host
	key crypto.PrivKey
	cat *Catalog
	svc *Service
}

func startHost(t *testing.T, ctx context.Context, c *cluster.Config, interval time.Duration) *testHost {
	t.Helper()
	key, _ := testKey(t)
	g := p2p.NewGater(c, time.Now, slog.New(slog.DiscardHandler))
	h, err := p2p.NewHost(key, []string{"/ip4/127.0.0.1/tcp/0"}, c, g)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	th := &testHost{h: h, key: key, cat: NewCatalog()}
	th.svc = New(Config{Host: h, Key: key, Cluster: c, Catalog: th.cat, Store: noLayers{}, Log: slog.New(slog.DiscardHandler),
		Interval: interval, Announce: notify.New(), Activations: notify.New(),
		HostPolicy: func() json.RawMessage { return nil }, States: func() []HostState { return nil },
		UnreachableAfter: time.Minute, GoneAfter: time.Hour, Reg: prometheus.NewRegistry()})
	ps, err := NewPubSub(ctx, h, c.Name, g.Allowed)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- th.svc.Run(ctx, ps) }()
	t.Cleanup(func() {
		if err := <-done; err != nil {
			t.Errorf("catalogue service: %v", err)
		}
	})
	return th
}

func connect(t *testing.T, a, b *testHost) {
	t.Helper()
	if err := a.h.Connect(context.Background(), peer.AddrInfo{ID: b.h.ID(), Addrs: b.h.Addrs()}); err != nil {
		t.Fatal(err)
	}
}

func eventually(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !ok(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", d, what)
		}
	}
}

// A host cut off while 1,000 records changed catches up by pulling them
// from one peer when it comes back: it is sent those records (about once),
// not the catalogue again and again.
func TestPartitionedHostConvergesByPull(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := cluster.Default()
	a, b, late := startHost(t, ctx, c, 200*time.Millisecond), startHost(t, ctx, c, 200*time.Millisecond), startHost(t, ctx, c, 200*time.Millisecond)
	connect(t, a, b)
	const n = 1000
	mid := manifestID(t)
	for i := range n {
		m, err := SignMapping(a.key, Mapping{Name: fmt.Sprintf("app%d:1", i), CID: mid, Size: int64(i), Published: time.Now().UnixNano()})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.cat.Merge(m); err != nil {
			t.Fatal(err)
		}
	}
	a.svc.cfg.Announce.Notify()
	eventually(t, 20*time.Second, "b holds the 1,000 mappings", func() bool { return len(b.cat.All()) == n })
	gossipIn := testutil.ToFloat64(late.svc.bytes.WithLabelValues("in", "gossip"))
	connect(t, late, b) // b only: a's gossip cannot have reached it
	eventually(t, 20*time.Second, "the late host holds the 1,000 mappings", func() bool { return len(late.cat.All()) == n })
	pulled := testutil.ToFloat64(late.svc.bytes.WithLabelValues("in", "sync"))
	var size int
	for _, m := range b.cat.All() {
		b, _ := json.Marshal(mappingRecord(m))
		size += len(b)
	}
	t.Logf("the late host pulled %.0f bytes for %d bytes of records", pulled, size)
	if pulled > 2*float64(size) {
		t.Fatalf("the late host was sent %.0f bytes by sync for %d bytes of records: more than twice what it lacked", pulled, size)
	}
	if got := testutil.ToFloat64(late.svc.bytes.WithLabelValues("in", "gossip")) - gossipIn; got > float64(size)/10 {
		t.Fatalf("the late host got %.0f bytes of gossip: the records came by gossip, not by pull", got)
	}
	ra, _ := a.cat.root()
	eventually(t, 10*time.Second, "every catalogue has the same digest", func() bool {
		rb, _ := b.cat.root()
		rl, _ := late.cat.root()
		ra, _ = a.cat.root()
		return ra == rb && rb == rl
	})
}
