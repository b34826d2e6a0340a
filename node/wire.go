package node

import (
	"context"
	"encoding/json"
	"os"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/badgerstore"
	"github.com/p2pimg/p2pimg/node/activate"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/expose"
	"github.com/p2pimg/p2pimg/node/fetch"
	"github.com/p2pimg/p2pimg/node/gossip"
	"github.com/p2pimg/p2pimg/node/layers"
	"github.com/p2pimg/p2pimg/node/notify"
	"github.com/p2pimg/p2pimg/node/p2p"
	"github.com/p2pimg/p2pimg/node/policysync"
	"github.com/p2pimg/p2pimg/node/registry"
	"github.com/p2pimg/p2pimg/node/registry/relay"
	"github.com/p2pimg/p2pimg/node/seats"
	"github.com/p2pimg/p2pimg/node/xchg"
)

// build makes the services and passes each the others it needs. The
// order follows the arrows: a service is built after those it calls.
func build(cfg Config, db *badgerstore.DB, net *p2p.Net, key crypto.PrivKey) (*Node, error) {
	h := net.Host
	announce, reconcile := notify.New(), notify.New()
	n := &Node{cfg: cfg, db: db, net: net, reg: prometheus.NewRegistry(), catalog: gossip.NewCatalog(), rates: newRateMeter()}
	gc := &layers.GCGuard{}
	arrivals := registry.NewArrivals()
	conduct := p2p.NewConduct(h, net.Gater, cfg.Log, n.reg)
	n.fetch = fetch.New(fetch.Config{Host: h, Store: arrivalStore{db, arrivals}, Catalog: n.catalog, Gater: net.Gater, Stats: net.Stats, Pins: gc,
		Log: cfg.Log, Down: fetch.Limiter(cfg.MaxDownload), StallTimeout: cfg.StallTimeout, Announce: announce, Reg: n.reg, Faults: cfg.Faults, Conduct: conduct})
	n.xchg = xchg.NewServer(xchg.ServerConfig{Host: h, Source: source{db, n.fetch}, Log: cfg.Log, Stats: net.Stats,
		Up: fetch.Limiter(cfg.MaxUpload), Reg: n.reg, Faults: cfg.Faults, Conduct: conduct})
	exposer := expose.New(expose.Config{Store: db, DataDir: cfg.DataDir, Root: cfg.Root, Mode: cfg.Expose, Log: cfg.Log, DiskReserve: cfg.DiskReserve,
		Fetch: n.fetch, OnReadError: func(cidStr string, id cid.Cid, err error) { n.act.NoteReadError(cidStr, id, err) },
		OnChunkRead: func(cidStr string, id cid.Cid) { n.act.NoteChunkRead(cidStr, id) }})
	var err error
	n.policy, err = policysync.New(policysync.Config{ID: h.ID(), Key: key, Labels: cfg.Labels, Cluster: cfg.Cluster, Catalog: n.catalog,
		Store: db, Fetcher: n.fetch, Exposer: exposer, Log: cfg.Log, Announce: announce, Reconcile: reconcile, HostPolicy: cfg.HostPolicy})
	if err != nil {
		return nil, err
	}
	if n.seats, err = seats.New(seats.Config{Host: h, Cluster: cfg.Cluster, DataDir: cfg.DataDir, Log: cfg.Log,
		Interval: cfg.AnnounceInterval, Faults: cfg.Faults}); err != nil {
		return nil, err
	}
	n.act = activate.New(activate.Config{Host: h, Key: key, Cluster: cfg.Cluster, Labels: cfg.Labels, Root: cfg.Root, AllowedPaths: cfg.AllowedPaths, Catalog: n.catalog,
		Store: db, Fetcher: n.fetch, Seats: n.seats, Policy: n.policy, Exposer: exposer, Lazy: cfg.Lazy, TraceWindow: cfg.TraceWindow, Log: cfg.Log, Announce: announce, Reconcile: reconcile,
		Reach: func(p peer.ID, now time.Time) (api.Reach, time.Time) { return n.gossip.Reach(p, now) }}) // the catalogue service is built last
	n.layers = layers.New(layers.Config{Store: db, Catalog: n.catalog, Key: key, DataDir: cfg.DataDir, Policy: n.policy, Held: n.act, GC: gc, ImportMaxBytes: cfg.ImportMaxBytes, ImportMaxRatio: cfg.ImportMaxRatio,
		Log: cfg.Log, Announce: announce, Images: keepImage(func(ctx context.Context, root *os.Root, name chunk.Name) (string, error) {
			return n.mirror.KeepImage(ctx, root, name) // the mirror is built next: it publishes through layers
		})})
	n.relay = relay.New(relay.Config{Host: h, Server: mirrorServer(cfg.Registry, func() relay.Server { return n.mirror }), Log: cfg.Log, Faults: cfg.Faults,
		Stall: cfg.RelayStall, Live: func() []peer.ID { return n.liveHosts() }}) // the catalogue service is built last
	n.mirror = registry.New(registry.Config{Addr: cfg.Registry, Store: db, Publisher: n.layers, Fetcher: n.fetch, Catalog: n.catalog,
		Upstreams: cfg.Upstreams, Relay: n.relay, Log: cfg.Log, Reg: n.reg}, arrivals)
	n.gossip = gossip.New(gossip.Config{Host: h, Key: key, Cluster: cfg.Cluster, Catalog: n.catalog, Store: db, Log: cfg.Log, Labels: cfg.Labels, Name: cfg.Name,
		Interval: cfg.AnnounceInterval, Announce: announce, Activations: reconcile,
		HostPolicy: func() json.RawMessage { return n.policy.HostPolicyJSON() }, States: n.act.States, StoreUse: n.storeSummary, Reg: n.reg, Faults: cfg.Faults,
		UnreachableAfter: 12 * cfg.AnnounceInterval, GoneAfter: cfg.GoneAfter})
	n.registerMetrics()
	return n, nil
}

// mirrorServer is what answers other mirrors' blob requests: the registry
// built later (get), when this host runs a mirror; nil otherwise.
func mirrorServer(addr string, get func() relay.Server) relay.Server {
	if addr == "" {
		return nil
	}
	return lateServer(get)
}

type lateServer func() relay.Server

func (f lateServer) ServePeer(ctx context.Context, ask registry.PeerAsk, from string, sink registry.PeerSink) (string, error) {
	return f().ServePeer(ctx, ask, from, sink)
}

// liveHosts are the other hosts the catalogue counts as up.
func (n *Node) liveHosts() []peer.ID {
	now := time.Now()
	var out []peer.ID
	for p := range n.catalog.Hosts() {
		if r, _ := n.gossip.Reach(p, now); r == api.ReachUp {
			out = append(out, p)
		}
	}
	return out
}

// source is what the chunk server serves: chunks and manifests from the
// store, have-bitmaps from the fetcher (which knows the fetches under way).
type source struct {
	*badgerstore.DB
	*fetch.Fetcher
}

// arrivalStore is the fetcher's store: the registry's blob streams read
// the verified chunks a fetch stores while they are written, and wake when
// they are.
type arrivalStore struct {
	*badgerstore.DB
	arrivals *registry.Arrivals
}

func (s arrivalStore) PutUncached(ctx context.Context, blocks ...chunk.Block) error {
	s.arrivals.Storing(blocks)
	defer s.arrivals.Stored(blocks)
	return s.DB.PutUncached(ctx, blocks...)
}

// keepImage lets layers keep an import's blobs in the registry built after it.
type keepImage func(ctx context.Context, root *os.Root, name chunk.Name) (string, error)

func (f keepImage) KeepImage(ctx context.Context, root *os.Root, name chunk.Name) (string, error) {
	return f(ctx, root, name)
}
