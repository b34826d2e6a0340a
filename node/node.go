package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/singleflight"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/go-cid"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/badgerstore"
	"github.com/p2pimg/p2pimg/chunk/tree"
	"github.com/p2pimg/p2pimg/license"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/policy"
)

// Config configures a node.
type Config struct {
	DataDir string
	Log     *slog.Logger   // default: discard
	Cluster *ClusterConfig // default: an open cluster named "default"
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
	// Root is where activation paths live (default /): a testnet gives each
	// node its own, so several daemons on one machine do not collide.
	Root string
	// Labels describe the host; activations select hosts by them.
	Labels map[string]string
	// Expose is how activated layers appear: overlay (a mount; needs root
	// and overlayfs), materialized (a directory swapped in), or auto (the
	// default: overlay where the host allows it).
	Expose string
	// MaxUpload and MaxDownload cap chunk bytes per second served and
	// fetched (0 = no cap).
	MaxUpload, MaxDownload int64
	// TestCorruptServe flips a byte in every chunk served: for tests of
	// what the cluster does with a lying peer. Never set it in production.
	TestCorruptServe bool
	// TestStallServe never answers chunk requests (it says it has the
	// chunks): for tests of a stalled peer. Never set it in production.
	TestStallServe bool
	// TestGossipFlood publishes this host's snapshot as fast as it can: a
	// flooding peer for tests. Never set it in production.
	TestGossipFlood bool
	// HostPolicy is this host's policy (TOML text); empty keeps the one
	// stored by `p2pimg policy set-host`.
	HostPolicy string
	// TestClockOffset shifts the clock this host's keeper stamps seat
	// commands with: for tests of clock skew between keepers. Never set it
	// in production.
	TestClockOffset time.Duration
	// SeatJournal, when set, is a file where this host appends every
	// interval during which it treated a seat grant as valid: the record
	// the seat fault tests check for over-allocation.
	SeatJournal string
}

// Node is one host: its store, its libp2p host and its view of the cluster.
type Node struct {
	cfg     Config
	log     *slog.Logger
	dataDir string
	db      *badgerstore.DB

	key      crypto.PrivKey
	host     host.Host
	gater    *gater
	ps       *pubsub.PubSub
	topic    *pubsub.Topic
	catalog  *catalog
	metrics  *metrics
	stats    *peerStats
	kick     chan struct{}          // asks the announcer to gossip now
	actKick  chan struct{}          // asks the reconciler to look at activations now
	keeper   atomic.Pointer[keeper] // set in Run when this host is a keeper
	seats    *seats
	policies *hostPolicies
	seatKick chan struct{}
	stMu     sync.Mutex
	states   map[string]HostState // this host's activation states, by layer

	probeOnce sync.Once
	autoMode  string        // exposure mode chosen by the probe, for Expose auto
	up        *rate.Limiter // nil: no cap
	down      *rate.Limiter

	fetchMu sync.Mutex
	fetches map[cid.Cid]*fetch
	// chunkIDs caches the distinct chunk ids of recently served manifests,
	// so answering every fetcher's have-request does not decode the manifest
	// again (manifests are immutable: an id always has the same chunks).
	chunkIDs *lru.Cache[cid.Cid, []cid.Cid]
	decoding singleflight.Group

	// gcMu keeps gc from deleting chunks an add, fetch or checkout is
	// using: those hold it shared, gc holds it exclusively.
	gcMu sync.RWMutex
}

// Open opens the node's store (DataDir/store), loads its host key and
// starts listening. Gossip and peer connections start in Run.
func Open(cfg Config) (*Node, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Cluster == nil {
		cfg.Cluster = DefaultCluster()
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
	if cfg.Cluster.psk != nil {
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
	key, err := LoadIdentity(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	db, err := badgerstore.Open(filepath.Join(cfg.DataDir, "store"), cfg.Log)
	if err != nil {
		return nil, err
	}
	chunkIDs, _ := lru.New[cid.Cid, []cid.Cid](16) // errs only for a size below 1
	n := &Node{
		cfg: cfg, log: cfg.Log, dataDir: cfg.DataDir, db: db, key: key,
		gater: newGater(cfg.Cluster, time.Now, cfg.Log), catalog: newCatalog(), metrics: newMetrics(),
		stats: newPeerStats(), kick: make(chan struct{}, 1), fetches: map[cid.Cid]*fetch{}, chunkIDs: chunkIDs,
		actKick: make(chan struct{}, 1), states: map[string]HostState{},
		seats: newSeats(), seatKick: make(chan struct{}, 1), policies: newHostPolicies(),
	}
	if err := n.loadHostPolicy(cfg.HostPolicy); err != nil {
		db.Close()
		return nil, fmt.Errorf("host policy: %w", err)
	}
	if cfg.SeatJournal != "" {
		if n.seats.journal, err = os.OpenFile(cfg.SeatJournal, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err != nil {
			db.Close()
			return nil, fmt.Errorf("seat journal: %w", err)
		}
	}
	n.up, n.down = limiter(cfg.MaxUpload), limiter(cfg.MaxDownload)
	n.metrics.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "p2pimg_gossip_flood_dropped_total", Help: "Catalogue snapshots dropped because their host sent more than its share.",
	}, func() float64 {
		n.catalog.mu.Lock()
		defer n.catalog.mu.Unlock()
		return float64(n.catalog.dropped)
	}))
	if n.host, err = newHost(key, cfg.Listen, cfg.Cluster, n.gater); err != nil {
		db.Close()
		return nil, err
	}
	n.host.SetStreamHandler(xchgProto, n.handleXchg)
	n.host.SetStreamHandler(diffProto, n.handleDiff)
	if cfg.Cluster.Open() {
		n.log.Warn("OPEN CLUSTER: no members list, any host that can reach this one (and has the PSK, if set) may join")
	}
	return n, nil
}

// limiter caps bytes per second; bursts may be as large as one chunk.
func limiter(bps int64) *rate.Limiter {
	if bps <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(bps), chunk.MaxChunkSize)
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
	return n.host.Connect(ctx, *ai)
}

// Close stops the host and closes the store.
func (n *Node) Close() error {
	var jerr error
	if n.seats.journal != nil {
		jerr = n.seats.journal.Close()
	}
	return errors.Join(n.host.Close(), n.db.Close(), jerr)
}

// ID is the node's peer id.
func (n *Node) ID() peer.ID { return n.host.ID() }

// Addrs are the node's listen addresses, each ending in /p2p/ID.
func (n *Node) Addrs() []string {
	var out []string
	for _, a := range n.host.Addrs() {
		out = append(out, a.String()+"/p2p/"+n.host.ID().String())
	}
	return out
}

// Registry is the node's Prometheus registry.
func (n *Node) Registry() *prometheus.Registry { return n.metrics.reg }

// Emit receives the events of a long operation.
type Emit func(api.Event)

// progress returns a tree.Progress that emits at most every 100 ms, and always the end.
func progress(emit Emit, phase string) tree.Progress {
	var last time.Time
	return func(done, total int64) {
		if now := time.Now(); done == total || now.Sub(last) >= 100*time.Millisecond {
			last = now
			emit(api.Event{Progress: &api.Progress{Phase: phase, Done: done, Total: total}})
		}
	}
}

func params(req api.AddRequest, path string, isFile bool) (chunk.Params, error) {
	p := tree.DefaultParams(path, isFile)
	if req.Chunking == "" && req.ChunkSize == "" && req.Hash == "" {
		return p, nil
	}
	mode := p.Mode
	if req.Chunking != "" {
		mode = chunk.Mode(req.Chunking)
	}
	size := p.Avg
	if req.ChunkSize != "" {
		s, err := chunk.ParseSize(req.ChunkSize)
		if err != nil {
			return p, err
		}
		size = s
	}
	hash, err := chunk.ParseHash(req.Hash)
	if err != nil {
		return p, err
	}
	return chunk.NewParams(mode, size, hash)
}

// Add builds a layer from a local path and records it as NAME:TAG.
func (n *Node) Add(ctx context.Context, req api.AddRequest, emit Emit) (*api.AddResult, error) {
	name, err := chunk.ParseName(req.Name)
	if err != nil {
		return nil, badRequest(err)
	}
	if !filepath.IsAbs(req.Path) {
		return nil, badRequestf("add %s: path %q must be absolute", name, req.Path)
	}
	fi, err := os.Lstat(req.Path)
	if err != nil {
		return nil, badRequest(fmt.Errorf("add %s: %w", name, err))
	}
	p, err := params(req, req.Path, fi.Mode().IsRegular())
	if err != nil {
		return nil, badRequest(fmt.Errorf("add %s: %w", name, err))
	}
	n.gcMu.RLock()
	defer n.gcMu.RUnlock()
	res, err := tree.Add(ctx, n.db, req.Path, p, progress(emit, "add"))
	if err != nil {
		return nil, fmt.Errorf("add %s: %w", name, err)
	}
	for _, s := range res.Skipped {
		emit(api.Event{Warning: fmt.Sprintf("skipped %s: %s", s.Path, s.Reason)})
	}
	mp := Mapping{Product: req.Product}
	if req.Product != "" {
		if err := license.CheckProduct(req.Product); err != nil {
			return nil, badRequest(fmt.Errorf("add %s: %w", name, err))
		}
	}
	if req.Policy != "" {
		lp, err := policy.ParseLayer([]byte(req.Policy))
		if err != nil {
			return nil, badRequest(fmt.Errorf("add %s: %w", name, err))
		}
		mp.Policy, _ = json.Marshal(lp)
		if lp.Product != "" && mp.Product == "" {
			mp.Product = lp.Product
		}
	}
	l, err := n.publish(ctx, name, res.CID, res.Encoded, res.Manifest, mp)
	if err != nil {
		return nil, fmt.Errorf("add %s: %w", name, err)
	}
	n.log.Info("layer added", "layer", name.String(), "cid", res.CID.String(), "size", l.Size, "new_bytes", res.NewBytes)
	out := &api.AddResult{Layer: l, NewChunks: res.NewChunks, NewBytes: res.NewBytes}
	for _, s := range res.Skipped {
		out.Skipped = append(out.Skipped, api.SkippedPath{Path: s.Path, Reason: s.Reason})
	}
	return out, nil
}

// publish stores a manifest, records it complete as name and announces
// the signed mapping; tmpl carries the product and policy to keep.
func (n *Node) publish(ctx context.Context, name chunk.Name, id cid.Cid, encoded []byte, m *chunk.Manifest, tmpl Mapping) (chunk.Layer, error) {
	if err := n.db.PutManifest(ctx, id, encoded); err != nil {
		return chunk.Layer{}, err
	}
	l := layerRecord(name, id, m, chunk.Complete)
	mp := Mapping{Name: name.String(), CID: id.String(), Size: l.Size, Published: time.Now().UnixNano(), Product: tmpl.Product, Policy: tmpl.Policy}
	if old, ok := n.catalog.lookup(name.String()); ok && mp.Published <= old.Published {
		mp.Published = old.Published + 1 // a new version always wins
	}
	mp, err := signMapping(n.key, mp)
	if err != nil {
		return l, fmt.Errorf("sign: %w", err)
	}
	l.Publisher, l.Published, l.Signature, l.Product, l.Policy = mp.Publisher, mp.Published, mp.Sig, mp.Product, mp.Policy
	if err := n.db.PutLayer(ctx, l); err != nil {
		return l, err
	}
	n.catalog.merge(mp)
	n.announceSoon()
	return l, nil
}

func layerRecord(name chunk.Name, id cid.Cid, m *chunk.Manifest, state chunk.LayerState) chunk.Layer {
	return chunk.Layer{
		Name: name.String(), CID: id.String(), State: state,
		Size: m.Size(), Chunks: m.ChunkCount(), Entries: len(m.Entries),
		Chunking: m.Params.String(), Added: time.Now().UTC(),
	}
}

// layer looks up NAME:TAG and its manifest.
func (n *Node) layer(ctx context.Context, ref string) (chunk.Layer, *chunk.Manifest, error) {
	name, err := chunk.ParseName(ref)
	if err != nil {
		return chunk.Layer{}, nil, badRequest(err)
	}
	l, err := n.db.GetLayer(ctx, name)
	if err != nil {
		return l, nil, fmt.Errorf("%w (see `p2pimg layers`)", err)
	}
	id, err := cid.Decode(l.CID)
	if err != nil {
		return l, nil, fmt.Errorf("layer %s: record names %q: %w", name, l.CID, err)
	}
	m, err := n.db.GetManifest(ctx, id)
	if err != nil {
		return l, nil, fmt.Errorf("layer %s: %w", name, err)
	}
	return l, m, nil
}

// Checkout writes a complete layer into a local directory.
func (n *Node) Checkout(ctx context.Context, req api.CheckoutRequest, emit Emit) (*api.CheckoutResult, error) {
	if !filepath.IsAbs(req.Dir) {
		return nil, badRequestf("checkout: directory %q must be absolute", req.Dir)
	}
	n.gcMu.RLock()
	defer n.gcMu.RUnlock()
	l, m, err := n.layer(ctx, req.Name)
	if err != nil {
		return nil, err
	}
	if l.State != chunk.Complete {
		return nil, &codedError{api.CodeConflict, fmt.Errorf("layer %s is %s: some chunks are missing; fetch it first", l.Name, l.State)}
	}
	if m, err = n.flat(ctx, m); err != nil {
		return nil, fmt.Errorf("checkout %s: %w", l.Name, err)
	}
	err = tree.Checkout(ctx, n.db, m, req.Dir, tree.CheckoutOptions{
		Force: req.Force, Owners: os.Geteuid() == 0, Progress: progress(emit, "checkout"),
	})
	if err != nil {
		return nil, fmt.Errorf("checkout %s: %w", l.Name, err)
	}
	return &api.CheckoutResult{Layer: l, Dir: req.Dir}, nil
}

// Common compares this host's layers: identical files and shared chunks.
func (n *Node) Common(ctx context.Context, refs []string) (*api.CommonResult, error) {
	if len(refs) < 2 {
		return nil, badRequestf("common: name at least two layers")
	}
	var ms []*chunk.Manifest
	for _, ref := range refs {
		_, m, err := n.layer(ctx, ref)
		if err == nil {
			m, err = n.flat(ctx, m) // a stacked layer is compared as the image it represents
		}
		if err != nil {
			return nil, err
		}
		ms = append(ms, m)
	}
	r := chunk.Common(ms...)
	return &api.CommonResult{Layers: refs, CommonReport: r}, nil
}

// Layers lists this host's layers.
func (n *Node) Layers(ctx context.Context) ([]chunk.Layer, error) {
	ls, err := n.db.Layers(ctx)
	if ls == nil {
		ls = []chunk.Layer{}
	}
	return ls, err
}

// Remove forgets NAME:TAG; its chunks go at the next gc unless another layer uses them.
func (n *Node) Remove(ctx context.Context, ref string) error {
	name, err := chunk.ParseName(ref)
	if err != nil {
		return badRequest(err)
	}
	if l, err := n.db.GetLayer(ctx, name); err == nil {
		if err := n.keeps(name.String(), l.CID); err != nil {
			return &codedError{api.CodeConflict, fmt.Errorf("rm refused: %w", err)}
		}
	}
	if err := n.db.DeleteLayer(ctx, name); err != nil {
		return fmt.Errorf("%w (see `p2pimg layers`)", err)
	}
	n.log.Info("layer removed", "layer", name.String())
	return nil
}

// referenced returns the chunks and manifests every kept layer needs.
func (n *Node) referenced(ctx context.Context) (map[cid.Cid]bool, map[cid.Cid]bool, error) {
	ls, err := n.db.Layers(ctx)
	if err != nil {
		return nil, nil, err
	}
	chunks, manifests := map[cid.Cid]bool{}, map[cid.Cid]bool{}
	for _, l := range ls {
		id, err := cid.Decode(l.CID)
		if err != nil {
			return nil, nil, fmt.Errorf("layer %s: %w", l.Name, err)
		}
		// A layer keeps the layers it is stacked on.
		for id.Defined() && !manifests[id] {
			m, err := n.db.GetManifest(ctx, id)
			if errors.Is(err, chunk.ErrNotFound) && l.State != chunk.Complete {
				break // an incomplete fetch has not got its parents yet
			}
			if err != nil {
				return nil, nil, fmt.Errorf("layer %s: %w", l.Name, err)
			}
			manifests[id] = true
			for _, e := range m.Entries {
				for _, r := range e.Chunks {
					chunks[r.CID] = true
				}
			}
			id = m.Parent
		}
	}
	return chunks, manifests, nil
}

// GC removes chunks and manifests that no kept layer references.
func (n *Node) GC(ctx context.Context) (*api.GCResult, error) {
	n.gcMu.Lock()
	defer n.gcMu.Unlock()
	keep, keepManifests, err := n.referenced(ctx)
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	res := &api.GCResult{}
	var drop []cid.Cid
	err = n.db.Walk(ctx, false, func(id cid.Cid, size int, _ []byte) error {
		if keep[id] {
			res.KeptChunks++
			return nil
		}
		drop = append(drop, id)
		res.RemovedBytes += int64(size)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	for len(drop) > 0 {
		k := min(len(drop), 10000)
		if err := n.db.Delete(ctx, drop[:k]...); err != nil {
			return nil, fmt.Errorf("gc: %w", err)
		}
		res.RemovedChunks += k
		drop = drop[k:]
	}
	ms, err := n.db.Manifests(ctx)
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	for _, id := range ms {
		if !keepManifests[id] {
			if err := n.db.DeleteManifest(ctx, id); err != nil {
				return nil, fmt.Errorf("gc: %w", err)
			}
			res.RemovedManifests++
		}
	}
	if err := n.db.Sync(); err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	freed, err := n.db.Compact(ctx)
	if err != nil {
		return nil, fmt.Errorf("gc: reclaim space: %w", err)
	}
	res.ReclaimedBytes = freed
	n.log.Info("gc done", "removed_chunks", res.RemovedChunks, "removed_bytes", res.RemovedBytes)
	return res, nil
}

// Verify re-hashes every stored chunk, removes the corrupt ones and marks
// the layers that used them incomplete, so they are fetched again.
func (n *Node) Verify(ctx context.Context, emit Emit) (*api.VerifyResult, error) {
	n.gcMu.Lock() // nothing may read a chunk we are about to remove
	defer n.gcMu.Unlock()
	st, err := n.db.Stats(ctx)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	res := &api.VerifyResult{}
	var corrupt []cid.Cid
	prog := progress(emit, "verify")
	// Chunks are checked in batches (Walk's buffer is reused, so each is
	// copied): hashing them side by side is several times cheaper. A batch
	// that fails is checked chunk by chunk to find the corrupt ones.
	var ids []cid.Cid
	var datas [][]byte
	var buf []byte
	check := func() {
		if _, err := chunk.VerifyMany(ids, datas); err != nil {
			for i, id := range ids {
				if _, err := chunk.Verify(id, datas[i]); err != nil {
					n.log.Warn("corrupt chunk", "cid", id.String(), "err", err)
					corrupt = append(corrupt, id)
				}
			}
		}
		res.Checked += int64(len(ids))
		prog(res.Checked, max(st.Chunks, res.Checked))
		ids, datas, buf = ids[:0], datas[:0], buf[:0]
	}
	err = n.db.Walk(ctx, true, func(id cid.Cid, _ int, data []byte) error {
		start := len(buf)
		buf = append(buf, data...)
		ids, datas = append(ids, id), append(datas, buf[start:len(buf):len(buf)])
		if len(ids) == 16 {
			check()
		}
		return nil
	})
	if err == nil && len(ids) > 0 {
		check()
	}
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	if len(corrupt) == 0 {
		return res, nil
	}
	if err := n.db.Delete(ctx, corrupt...); err != nil {
		return nil, fmt.Errorf("verify: remove corrupt chunks: %w", err)
	}
	bad := map[cid.Cid]bool{}
	for _, id := range corrupt {
		bad[id] = true
		res.Corrupt = append(res.Corrupt, id.String())
	}
	ls, err := n.db.Layers(ctx)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	for _, l := range ls {
		id, _ := cid.Decode(l.CID)
		m, err := n.db.GetManifest(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("verify: layer %s: %w", l.Name, err)
		}
		if usesAny(m, bad) && l.State == chunk.Complete {
			l.State = chunk.Incomplete
			if err := n.db.PutLayer(ctx, l); err != nil {
				return nil, fmt.Errorf("verify: layer %s: %w", l.Name, err)
			}
			res.LayersAffected = append(res.LayersAffected, l.Name)
		}
	}
	return res, nil
}

func usesAny(m *chunk.Manifest, set map[cid.Cid]bool) bool {
	for _, e := range m.Entries {
		for _, r := range e.Chunks {
			if set[r.CID] {
				return true
			}
		}
	}
	return false
}

// Stats summarises the store.
func (n *Node) Stats(ctx context.Context) (*api.Stats, error) {
	ls, err := n.db.Layers(ctx)
	if err != nil {
		return nil, err
	}
	st, err := n.db.Stats(ctx)
	if err != nil {
		return nil, err
	}
	out := &api.Stats{Layers: len(ls), Chunks: st.Chunks, StoredBytes: st.StoredBytes}
	seen := map[string]bool{}
	for _, l := range ls {
		if !seen[l.CID] { // two tags of one manifest are one layer's bytes
			seen[l.CID] = true
			out.LogicalBytes += l.Size
		}
	}
	if st.StoredBytes > 0 {
		out.DedupRatio = float64(out.LogicalBytes) / float64(st.StoredBytes)
	}
	return out, nil
}

// manifestBytes returns the canonical encoding of a stored manifest.
func (n *Node) manifestBytes(ctx context.Context, id cid.Cid) ([]byte, error) {
	return n.db.ManifestBytes(ctx, id)
}

// haveBitmap says which of a layer's distinct chunks this host has.
func (n *Node) haveBitmap(ctx context.Context, id cid.Cid) ([]byte, error) {
	n.fetchMu.Lock()
	f := n.fetches[id]
	n.fetchMu.Unlock()
	if f != nil {
		return f.bitmap(), nil
	}
	ids, ok := n.chunkIDs.Get(id)
	if !ok {
		// Every stream of every fetcher asks at once when a fetch starts:
		// one of them decodes the manifest, the others wait for it.
		v, err, _ := n.decoding.Do(id.KeyString(), func() (any, error) {
			m, err := n.db.GetManifest(ctx, id)
			if err != nil {
				return nil, err
			}
			ids := refIDs(m.UniqueRefs())
			n.chunkIDs.Add(id, ids)
			return ids, nil
		})
		if err != nil {
			return nil, err
		}
		ids = v.([]cid.Cid)
	}
	has, err := n.db.HasMany(ctx, ids)
	if err != nil {
		return nil, err
	}
	return packBits(has), nil
}

// present lists a layer's distinct chunks and which of them the store has.
func (n *Node) present(ctx context.Context, m *chunk.Manifest) ([]chunk.Ref, []bool, error) {
	refs := m.UniqueRefs()
	has, err := n.db.HasMany(ctx, refIDs(refs))
	return refs, has, err
}

func refIDs(refs []chunk.Ref) []cid.Cid {
	ids := make([]cid.Cid, len(refs))
	for i, r := range refs {
		ids[i] = r.CID
	}
	return ids
}

var errStarting = &codedError{api.CodeStarting, errors.New("the daemon is starting (opening its store); try again in a moment")}
