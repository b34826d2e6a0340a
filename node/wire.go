package node

import (
	"encoding/json"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/p2pimg/p2pimg/chunk/badgerstore"
	"github.com/p2pimg/p2pimg/node/activate"
	"github.com/p2pimg/p2pimg/node/expose"
	"github.com/p2pimg/p2pimg/node/fetch"
	"github.com/p2pimg/p2pimg/node/gossip"
	"github.com/p2pimg/p2pimg/node/internal/notify"
	"github.com/p2pimg/p2pimg/node/layers"
	"github.com/p2pimg/p2pimg/node/p2p"
	"github.com/p2pimg/p2pimg/node/policysync"
	"github.com/p2pimg/p2pimg/node/seats"
	"github.com/p2pimg/p2pimg/node/xchg"
)

// build makes the services and passes each the others it needs. The
// order follows the arrows: a service is built after those it calls.
func build(cfg Config, db *badgerstore.DB, net *p2p.Net, key crypto.PrivKey) (*Node, error) {
	h := net.Host
	announce, reconcile := notify.New(), notify.New()
	n := &Node{cfg: cfg, db: db, net: net, reg: prometheus.NewRegistry(), catalog: gossip.NewCatalog()}
	gc := &layers.GCGuard{}
	n.fetch = fetch.New(fetch.Config{Host: h, Store: db, Catalog: n.catalog, Gater: net.Gater, Stats: net.Stats, Pins: gc,
		Log: cfg.Log, Down: fetch.Limiter(cfg.MaxDownload), StallTimeout: cfg.StallTimeout, Announce: announce, Reg: n.reg, Faults: cfg.Faults})
	n.xchg = xchg.NewServer(xchg.ServerConfig{Host: h, Source: source{db, n.fetch}, Log: cfg.Log, Stats: net.Stats,
		Up: fetch.Limiter(cfg.MaxUpload), Reg: n.reg, Faults: cfg.Faults})
	exposer := expose.New(expose.Config{Store: db, DataDir: cfg.DataDir, Root: cfg.Root, Mode: cfg.Expose, Log: cfg.Log})
	var err error
	n.policy, err = policysync.New(policysync.Config{ID: h.ID(), Key: key, Labels: cfg.Labels, Cluster: cfg.Cluster, Catalog: n.catalog,
		Store: db, Fetcher: n.fetch, Exposer: exposer, Log: cfg.Log, Announce: announce, Reconcile: reconcile, HostPolicy: cfg.HostPolicy})
	if err != nil {
		return nil, err
	}
	n.layers = layers.New(layers.Config{Store: db, Catalog: n.catalog, Key: key, DataDir: cfg.DataDir, Policy: n.policy, GC: gc,
		Log: cfg.Log, Announce: announce})
	if n.seats, err = seats.New(seats.Config{Host: h, Cluster: cfg.Cluster, DataDir: cfg.DataDir, Log: cfg.Log,
		Interval: cfg.AnnounceInterval, Faults: cfg.Faults}); err != nil {
		return nil, err
	}
	n.act = activate.New(activate.Config{Host: h, Key: key, Cluster: cfg.Cluster, Labels: cfg.Labels, Root: cfg.Root, Catalog: n.catalog,
		Store: db, Fetcher: n.fetch, Seats: n.seats, Policy: n.policy, Exposer: exposer, Log: cfg.Log, Announce: announce, Reconcile: reconcile})
	n.gossip = gossip.New(gossip.Config{Host: h, Cluster: cfg.Cluster, Catalog: n.catalog, Store: db, Log: cfg.Log, Labels: cfg.Labels,
		Interval: cfg.AnnounceInterval, Announce: announce, Activations: reconcile,
		HostPolicy: func() json.RawMessage { return n.policy.HostPolicyJSON() }, States: n.act.States, Reg: n.reg, Faults: cfg.Faults})
	return n, nil
}

// source is what the chunk server serves: chunks and manifests from the
// store, have-bitmaps from the fetcher (which knows the fetches under way).
type source struct {
	*badgerstore.DB
	*fetch.Fetcher
}
