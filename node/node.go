// Package node is the p2pimg daemon's wiring: it opens the store and the
// libp2p host, builds one service per concern (gossip, xchg, fetch,
// seats, policysync, activate, layers; see their packages), runs them,
// and forwards the local API's calls to them. It holds no logic of its
// own beyond that wiring; the domain packages (chunk, license, policy)
// never import it.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/p2pimg/p2pimg/chunk/badgerstore"
	"github.com/p2pimg/p2pimg/node/activate"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/node/faults"
	"github.com/p2pimg/p2pimg/node/fetch"
	"github.com/p2pimg/p2pimg/node/gossip"
	"github.com/p2pimg/p2pimg/node/layers"
	"github.com/p2pimg/p2pimg/node/p2p"
	"github.com/p2pimg/p2pimg/node/policysync"
	"github.com/p2pimg/p2pimg/node/registry"
	"github.com/p2pimg/p2pimg/node/registry/relay"
	"github.com/p2pimg/p2pimg/node/seats"
	"github.com/p2pimg/p2pimg/node/xchg"
)

// Config configures a node.
type Config struct {
	DataDir string
	Log     *slog.Logger    // default: discard
	Cluster *cluster.Config // default: an open cluster named "default"
	// Listen multiaddrs; default TCP and QUIC on port 4001 of every interface.
	Listen []string
	// Peers to connect to (multiaddrs ending in /p2p/ID), kept connected.
	Peers []string
	// MDNS finds peers of the same cluster on the LAN.
	MDNS bool
	// AnnounceInterval is how often the node gossips its catalogue (default 10s).
	AnnounceInterval time.Duration
	// StallTimeout fails a fetch after this long without progress (default 60s).
	StallTimeout time.Duration
	// RelayStall is how long a mirror waits on a silent peer relaying it a
	// blob before it fetches the rest from upstream (default 15s).
	RelayStall time.Duration
	// Root is where activation paths live (default /): a testnet gives each
	// node its own, so several daemons on one machine do not collide.
	Root string
	// AllowedPaths are the only places (under Root, absolute) where
	// activations may put a layer (--at) or redirect a host path (--map
	// SRC); none: anywhere under Root.
	AllowedPaths []string
	// ImportMaxBytes and ImportMaxRatio bound what an import may unpack
	// (0: 64 GiB, and 200 bytes written per archive byte read).
	ImportMaxBytes, ImportMaxRatio int64
	// DiskReserve is the free space an add or fetch must leave on the
	// data directory's disk, or it is refused before it writes (0: 16 MiB;
	// negative: none).
	DiskReserve int64
	// Labels describe the host; activations select hosts by them.
	Labels map[string]string
	// Name is the host's name for people (status, the web view); default
	// the machine's hostname.
	Name string
	// Expose is how activated layers appear: overlay (a mount; needs root
	// and overlayfs), materialized (a directory swapped in), or auto (the
	// default: overlay where the host allows it).
	Expose api.Mode
	// Lazy makes fuse-mode activations active once the manifest is here:
	// a chunk is fetched from peers when first read (verified first), the
	// rest in the background.
	Lazy bool
	// TraceWindow is how long after a lazy activation the chunks read are
	// recorded as its access trace, which peers activating the same version
	// fetch first (default a minute).
	TraceWindow time.Duration
	// MaxUpload and MaxDownload cap chunk bytes per second served and
	// fetched (0 = no cap).
	MaxUpload, MaxDownload int64
	// HostPolicy is this host's policy (TOML text); empty keeps the one
	// stored by `p2pimg policy set-host`.
	HostPolicy string
	// GoneAfter is how long a host may go unheard before it is shown as
	// gone (default 1h); it is shown as unreachable after 12 announce
	// intervals.
	GoneAfter time.Duration
	// Registry is where the OCI registry mirror listens (host:port);
	// empty: off.
	Registry string
	// Upstreams are the registries the mirror may pull from, by the name
	// containerd's ?ns= gives.
	Upstreams registry.Upstreams
	// Faults switches on misbehaviour for tests and benchmarks; nil in
	// production.
	Faults *faults.Faults
	// ReloadCluster reads the cluster, members and PSK files again, for
	// SIGHUP and `p2pimg cluster reload`; nil: a reload is refused.
	ReloadCluster func() (*cluster.Config, error)
}

// Node is one host: its store, its libp2p host and the services that make
// it part of the cluster.
type Node struct {
	cfg      Config
	reloadMu sync.Mutex // one cluster reload at a time
	db       *badgerstore.DB
	net      *p2p.Net
	reg      *prometheus.Registry
	catalog  *gossip.Catalog
	gossip   *gossip.Service
	xchg     *xchg.Server
	fetch    *fetch.Fetcher
	seats    *seats.Service
	policy   *policysync.Service
	act      *activate.Reconciler
	layers   *layers.Service
	mirror   *registry.Service
	relay    *relay.Relay
	rates    *rateMeter // of fetches and peers, for the fleet view
	use      storeCache // this host's store figures, for the fleet view
	fleet    fleetCache // the fleet view's document, shared by its viewers
}

func (cfg *Config) defaults() {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Cluster == nil {
		cfg.Cluster = cluster.Default()
	}
	if cfg.Listen == nil {
		cfg.Listen = []string{"/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"}
	}
	if cfg.AnnounceInterval <= 0 {
		cfg.AnnounceInterval = 10 * time.Second
	}
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = 60 * time.Second
	}
	if cfg.Root == "" {
		cfg.Root = "/"
	}
	if real, err := filepath.EvalSymlinks(cfg.Root); err == nil {
		// Exposures and maps are made without following a symlink on
		// the way, --root's own included: resolved once here, by the
		// administrator's configuration.
		cfg.Root = real
	}
	if cfg.GoneAfter <= 0 {
		cfg.GoneAfter = time.Hour
	}
	if cfg.Name == "" {
		cfg.Name, _ = os.Hostname()
	}
	if cfg.Cluster.NetworkKey() != nil {
		var tcpOnly []string
		for _, a := range cfg.Listen {
			if !strings.Contains(a, "/quic") {
				tcpOnly = append(tcpOnly, a)
			}
		}
		if len(tcpOnly) < len(cfg.Listen) {
			cfg.Log.Warn("a private network key (PSK) is set: QUIC listen addresses are ignored, libp2p private networks are TCP only")
		}
		cfg.Listen = tcpOnly
	}
}

// Open opens the node's store (DataDir/store), loads its host key, starts
// listening and builds its services. Gossip, fetches and the reconciler
// start in Run.
func Open(cfg Config) (*Node, error) {
	cfg.defaults()
	key, err := cluster.LoadIdentity(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	db, err := badgerstore.OpenWith(filepath.Join(cfg.DataDir, "store"), badgerstore.Options{Log: cfg.Log, Reserve: cfg.DiskReserve})
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	net, err := p2p.Open(key, cfg.Listen, cfg.Cluster, cfg.Log)
	if err != nil {
		db.Close()
		return nil, err
	}
	n, err := build(cfg, db, net, key)
	if err == nil {
		err = n.mirror.Listen()
	}
	if err != nil {
		return nil, errors.Join(err, net.Host.Close(), db.Close())
	}
	if cfg.Cluster.Open() {
		cfg.Log.Warn("OPEN CLUSTER: no members list, any host that can reach this one (and has the PSK, if set) may join")
	}
	return n, nil
}

// Run starts gossip, the chunk server, seats, the policy syncer, the
// reconciler and peer connections, and runs until ctx ends. A service that
// fails stops the others and is the error. Cancellation is not an error.
func (n *Node) Run(ctx context.Context) error {
	ps, err := gossip.NewPubSub(ctx, n.net.Host, n.cfg.Cluster.Name, n.net.Gater.Allowed)
	if err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	n.net.Host.SetStreamHandler(diffProto, func(s network.Stream) { n.serveDiff(ctx, s) })
	defer n.net.Host.RemoveStreamHandler(diffProto)
	n.net.Host.SetStreamHandler(probeProto, n.serveProbe)
	defer n.net.Host.RemoveStreamHandler(probeProto)
	g.Go(func() error { return n.gossip.Run(ctx, ps) })
	g.Go(func() error { return n.xchg.Run(ctx) })
	g.Go(func() error { return n.seats.Run(ctx, ps) })
	g.Go(func() error { return n.policy.Run(ctx) })
	g.Go(func() error { return n.act.Run(ctx) })
	g.Go(func() error { return n.mirror.Run(ctx) })
	g.Go(func() error { return n.relay.Run(ctx) })
	g.Go(func() error {
		return p2p.KeepConnected(ctx, n.net.Host, n.net.Gater, p2p.ParseAddrs(n.cfg.Peers, n.cfg.Log), n.cfg.Log)
	})
	if n.cfg.MDNS {
		g.Go(func() error { return p2p.RunMDNS(ctx, n.net.Host, n.net.Gater, n.cfg.Cluster.Name, n.cfg.Log) })
	}
	return g.Wait()
}

// Close stops the host and closes the store (once the chunks fetched for
// reads are stored).
func (n *Node) Close() error {
	n.fetch.Wait()
	return errors.Join(n.net.Host.Close(), n.db.Close(), n.seats.Close())
}

// Connect dials a peer by multiaddr (ending in /p2p/ID).
func (n *Node) Connect(ctx context.Context, addr string) error {
	a, err := ma.NewMultiaddr(addr)
	if err != nil {
		return fmt.Errorf("peer address %q: %w", addr, err)
	}
	ai, err := peer.AddrInfoFromP2pAddr(a)
	if err != nil {
		return fmt.Errorf("peer address %q: %w", addr, err)
	}
	return n.net.Host.Connect(ctx, *ai)
}

// ID is the node's peer id.
func (n *Node) ID() peer.ID { return n.net.Host.ID() }

// Addrs are the node's listen addresses, each ending in /p2p/ID.
func (n *Node) Addrs() []string {
	var out []string
	for _, a := range n.net.Host.Addrs() {
		out = append(out, a.String()+"/p2p/"+n.net.Host.ID().String())
	}
	return out
}

// RegistryAddr is where the registry mirror listens (nil when off).
func (n *Node) RegistryAddr() net.Addr { return n.mirror.Addr() }

// RegistryMirrors are the other live hosts running a registry mirror, that
// blob fetches from upstream are shared with.
func (n *Node) RegistryMirrors() []string { return n.relay.Mirrors() }

// Registry is the node's Prometheus registry.
func (n *Node) Registry() *prometheus.Registry { return n.reg }
