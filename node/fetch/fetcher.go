package fetch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/faults"
	"github.com/p2pimg/p2pimg/node/gossip"
	"github.com/p2pimg/p2pimg/node/notify"
	"github.com/p2pimg/p2pimg/node/p2p"
	"github.com/p2pimg/p2pimg/node/xchg"
)

// Store is what a fetch reads and writes.
type Store interface {
	// HasMany reports, for each id in order, whether it is stored.
	HasMany(ctx context.Context, ids []cid.Cid) ([]bool, error)
	// PutUncached stores verified blocks without keeping them in the page
	// cache once synced. Idempotent.
	PutUncached(ctx context.Context, blocks ...chunk.Block) error
	// GetManifest is a stored manifest; chunk.ErrNotFound when absent.
	GetManifest(ctx context.Context, id cid.Cid) (*chunk.Manifest, error)
	// ManifestBytes is a stored manifest's encoding, checked against its
	// id; chunk.ErrNotFound when absent.
	ManifestBytes(ctx context.Context, id cid.Cid) ([]byte, error)
	// PutManifest stores an encoded manifest (checked by the caller). Idempotent.
	PutManifest(ctx context.Context, id cid.Cid, data []byte) error
	// GetLayer is the record of a name; chunk.ErrNotFound when absent.
	GetLayer(ctx context.Context, name chunk.Name) (chunk.Layer, error)
	// PutLayer writes a record durably, after every earlier write.
	PutLayer(ctx context.Context, l chunk.Layer) error
	// Reserve is nil when the disk has room for need more bytes (and its
	// reserve), else an error wrapping chunk.ErrNoSpace with the figures.
	Reserve(need int64) error
}

// Pinner keeps garbage collection from deleting chunks while a fetch
// stores them.
type Pinner interface {
	// Pin holds gc off until the returned func is called.
	Pin() (unpin func())
}

// Config configures a Fetcher.
type Config struct {
	Host    host.Host
	Store   Store
	Catalog *gossip.Catalog
	Gater   *p2p.Gater
	Stats   *p2p.Stats
	Pins    Pinner
	Log     *slog.Logger
	// Down caps chunk bytes fetched per second (nil: no cap).
	Down *rate.Limiter
	// StallTimeout fails a fetch after this long without progress.
	StallTimeout time.Duration
	// Announce is poked when this host starts or ends a fetch (its
	// holdings change).
	Announce *notify.Signal
	Reg      prometheus.Registerer
	Faults   *faults.Faults // only ChunkTrace applies
	// Conduct books peers' violations, failing streams and claims not
	// served (nil: not booked).
	Conduct *p2p.Conduct
}

// Fetcher fetches layers from peers.
type Fetcher struct {
	cfg    Config
	trace  func(faults.ChunkEvent)
	demand demand  // on-demand fetches in flight, which background ones yield to
	asks   streams // idle streams for on-demand asks
	// storing counts stores of chunks fetched on demand still going on
	// after their reads were answered.
	storing sync.WaitGroup

	mu      sync.Mutex
	fetches map[cid.Cid]*fetch
	started chan struct{} // closed when a fetch starts, then replaced
	// chunkIDs caches the distinct chunk ids of recently served manifests,
	// so answering every fetcher's have-request does not decode the manifest
	// again (manifests are immutable: an id always has the same chunks).
	chunkIDs *lru.Cache[cid.Cid, []cid.Cid]
	decoding singleflight.Group
	// decoded caches the manifests Manifest returned lately: decoding a
	// large one takes milliseconds, and the registry's blob streams ask
	// for one just before its fetch asks again (both wait for the first
	// byte). Handed out as copies.
	decoded *lru.Cache[cid.Cid, *chunk.Manifest]

	bytesIn       *prometheus.CounterVec
	chunksFetched prometheus.Counter
	verifyFails   *prometheus.CounterVec
	fetchSeconds  prometheus.Histogram
	failures      *prometheus.CounterVec
}

// New registers the fetcher's metrics; it starts nothing.
func New(cfg Config) *Fetcher {
	chunkIDs, _ := lru.New[cid.Cid, []cid.Cid](16) // errs only for a size below 1
	decoded, _ := lru.New[cid.Cid, *chunk.Manifest](8)
	fr := &Fetcher{cfg: cfg, trace: cfg.Faults.Get().ChunkTrace, fetches: map[cid.Cid]*fetch{}, started: make(chan struct{}), chunkIDs: chunkIDs,
		decoded: decoded,
		bytesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "p2pimg_chunk_bytes_in_total", Help: "Chunk bytes received, by peer.",
		}, []string{"peer"}),
		chunksFetched: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "p2pimg_chunks_fetched_total", Help: "Chunks fetched from peers and stored.",
		}),
		verifyFails: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "p2pimg_chunk_verify_failures_total", Help: "Chunks from peers that did not match their CID, by peer.",
		}, []string{"peer"}),
		fetchSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "p2pimg_fetch_duration_seconds", Help: "Time to fetch a layer.",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 14),
		}),
		failures: newFailures(),
	}
	cfg.Reg.MustRegister(fr.bytesIn, fr.chunksFetched, fr.verifyFails, fr.fetchSeconds, fr.failures)
	return fr
}

// Limiter caps bytes per second; bursts may be as large as one chunk. Nil
// for no cap (bps <= 0).
func Limiter(bps int64) *rate.Limiter {
	if bps <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(bps), chunk.MaxChunkSize)
}

type capKey struct{}

// WithCap caps the chunk bytes per second of the fetches run with ctx (a
// layer policy's bandwidth for background sync), on top of --max-download.
func WithCap(ctx context.Context, bps int64) context.Context {
	if bps <= 0 {
		return ctx
	}
	return context.WithValue(ctx, capKey{}, Limiter(bps))
}

func capFrom(ctx context.Context) *rate.Limiter {
	l, _ := ctx.Value(capKey{}).(*rate.Limiter)
	return l
}

// HaveBitmap says which of a layer's distinct chunks this host has: the
// answer to a peer's have-request (xchg.Source).
func (fr *Fetcher) HaveBitmap(ctx context.Context, id cid.Cid) ([]byte, error) {
	fr.mu.Lock()
	f := fr.fetches[id]
	fr.mu.Unlock()
	if f != nil {
		return f.bitmap(), nil
	}
	has, err := fr.holds(ctx, id)
	if err != nil {
		return nil, err
	}
	return xchg.PackBits(has), nil
}

// holds says which of layer id's distinct chunks the store has; an error
// when the manifest is absent.
func (fr *Fetcher) holds(ctx context.Context, id cid.Cid) ([]bool, error) {
	ids, ok := fr.chunkIDs.Get(id)
	if !ok {
		// Every stream of every fetcher asks at once when a fetch starts:
		// one of them decodes the manifest, the others wait for it.
		v, err, _ := fr.decoding.Do(id.KeyString(), func() (any, error) {
			m, err := fr.cfg.Store.GetManifest(ctx, id)
			if err != nil {
				return nil, err
			}
			ids := chunk.RefIDs(m.UniqueRefs())
			fr.chunkIDs.Add(id, ids)
			return ids, nil
		})
		if err != nil {
			return nil, err
		}
		ids = v.([]cid.Cid)
	}
	return fr.cfg.Store.HasMany(ctx, ids)
}

// FetchName makes NAME:TAG complete on this host, as the cluster
// catalogue maps it, fetching only the chunks the store lacks.
func (fr *Fetcher) FetchName(ctx context.Context, ref string, emit api.Emit) (*api.FetchResult, error) {
	name, err := chunk.ParseName(ref)
	if err != nil {
		return nil, api.BadRequest(err)
	}
	mp, ok := fr.cfg.Catalog.Lookup(name.String())
	if !ok {
		return nil, fmt.Errorf("fetch %s: the cluster catalogue has no such layer (see `p2pimg layers --all`): %w", name, chunk.ErrNotFound)
	}
	return fr.Fetch(ctx, name, mp, emit)
}

// Fetch makes layer name complete here as the manifest mp.CID, with the
// layer underneath when it is stacked. Safe to retry: it resumes. A
// failure is counted by its cause (p2pimg_fetch_failures_total).
func (fr *Fetcher) Fetch(ctx context.Context, name chunk.Name, mp gossip.Mapping, emit api.Emit) (*api.FetchResult, error) {
	res, err := fr.fetch(ctx, name, mp, emit)
	fr.failed(err)
	return res, err
}

func (fr *Fetcher) fetch(ctx context.Context, name chunk.Name, mp gossip.Mapping, emit api.Emit) (*api.FetchResult, error) {
	id, err := cid.Decode(mp.CID)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: manifest id %q: %w", name, mp.CID, err)
	}
	start := time.Now()
	defer fr.cfg.Pins.Pin()()
	if l, err := fr.cfg.Store.GetLayer(ctx, name); err == nil && l.CID == mp.CID && l.State == chunk.Complete {
		return &api.FetchResult{Layer: l}, nil
	}
	m, err := fr.Manifest(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", name, err)
	}
	rec := chunk.NewLayer(name, id, m, chunk.Incomplete)
	rec.Publisher, rec.Published, rec.Signature, rec.Product, rec.Policy = mp.Publisher, mp.Published, mp.Sig, mp.Product, mp.Policy
	// The incomplete record (what a restart resumes) is written while the
	// first chunks come: its syncs would otherwise delay the first byte of
	// a reader streaming the layer. It is on disk before the complete one.
	recorded := make(chan error, 1)
	go func() { recorded <- fr.cfg.Store.PutLayer(ctx, rec) }()
	f, err := fr.fetchChunks(ctx, id, m, name, emit)
	if rerr := <-recorded; rerr != nil {
		return nil, fmt.Errorf("fetch %s: %w", name, rerr)
	}
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", name, err)
	}
	// A stacked layer is complete when the layers under it are.
	for pid := m.Parent; pid.Defined(); {
		pm, err := fr.Manifest(ctx, pid)
		if err != nil {
			return nil, fmt.Errorf("fetch %s: parent layer %s: %w", name, pid, err)
		}
		pf, err := fr.fetchChunks(ctx, pid, pm, name, emit)
		if err != nil {
			return nil, fmt.Errorf("fetch %s: parent layer %s: %w", name, pid, err)
		}
		f.fetched += pf.fetched
		f.dupBytes += pf.dupBytes
		for p, b := range pf.perPeer {
			f.perPeer[p] += b
		}
		pid = pm.Parent
	}
	rec.State = chunk.Complete
	commit := time.Now()
	if err := fr.cfg.Store.PutLayer(ctx, rec); err != nil { // syncs the chunks first
		return nil, fmt.Errorf("fetch %s: %w", name, err)
	}
	done := time.Now()
	fr.fetchSeconds.Observe(done.Sub(start).Seconds())
	fr.cfg.Log.Info("layer fetched", "layer", name.String(), "cid", id.String(), "chunks", f.fetched, "bytes", f.done, "seconds", time.Since(start).Seconds(),
		"duplicate_bytes", f.dupBytes)
	res := &api.FetchResult{Layer: rec, FetchedChunks: f.fetched, Peers: map[string]int64{},
		Seconds: done.Sub(start).Seconds(), CommitSeconds: done.Sub(commit).Seconds()}
	for p, b := range f.perPeer {
		res.Peers[p.String()] = b
		res.FetchedBytes += b
	}
	return res, nil
}

// Manifest is a manifest from the store, else fetched from a peer,
// checked against its id, and stored.
func (fr *Fetcher) Manifest(ctx context.Context, id cid.Cid) (*chunk.Manifest, error) {
	// Looked up in the store every time (gc or rm may have removed it),
	// decoded only when not decoded lately.
	data, err := fr.cfg.Store.ManifestBytes(ctx, id)
	var m *chunk.Manifest
	switch {
	case err == nil:
		if c, ok := fr.decoded.Get(id); ok {
			return c.Clone(), nil
		}
		if m, err = chunk.DecodeManifest(data); err != nil {
			return nil, fmt.Errorf("manifest %s: %w", id, err)
		}
	case errors.Is(err, chunk.ErrNotFound):
		if m, data, err = fr.fetchManifest(ctx, id); err != nil {
			return nil, err
		}
		// Stored while the decoded copy is kept: for a large manifest
		// (a 4 GiB disk image in 64 KiB chunks: 2.9 MB) each takes tens of
		// milliseconds, and a lazy activation waits for both.
		stored := make(chan error, 1)
		go func() { stored <- fr.cfg.Store.PutManifest(ctx, id, data) }()
		fr.keepDecoded(id, data, m)
		if err := <-stored; err != nil {
			return nil, err
		}
		return m, nil
	default:
		return nil, err
	}
	fr.keepDecoded(id, data, m)
	return m, nil
}

// keepDecoded keeps a copy of manifest id decoded, unless it is large.
// (Manifest looks in the store first, so a copy whose storing then fails
// is never used.)
func (fr *Fetcher) keepDecoded(id cid.Cid, data []byte, m *chunk.Manifest) {
	if len(data) <= maxDecodedCached {
		fr.decoded.Add(id, m.Clone())
	}
}

// maxDecodedCached is the largest manifest (encoded) kept decoded: 4 MiB
// is about 95,000 chunks (a 6 GiB disk image in 64 KiB chunks) and about
// 6 MiB decoded, so the 8 kept stay under 50 MiB.
const maxDecodedCached = 4 << 20

// fetchManifest gets a manifest from whichever peer has it, and checks it.
func (fr *Fetcher) fetchManifest(ctx context.Context, id cid.Cid) (*chunk.Manifest, []byte, error) {
	fr.dialHolders(ctx, id)
	var errs []error
	for _, p := range fr.byMisses(fr.candidates(id)) {
		c, err := xchg.Dial(ctx, fr.cfg.Host, p)
		if err != nil {
			errs = append(errs, fmt.Errorf("peer %s: %w", p, err))
			continue
		}
		data, err := c.Ask(xchg.ReqManifest, id, chunk.MaxManifestSize, fr.manifestTimeout(p))
		c.Close()
		fr.claimed(p, id, err == nil)
		if err != nil {
			if !errors.Is(err, chunk.ErrNotFound) {
				fr.streamEnded(p, err)
			}
			errs = append(errs, fmt.Errorf("peer %s: %w", p, err))
			continue
		}
		if got := chunk.ManifestCID(data); !got.Equals(id) {
			fr.penalize(p, fmt.Errorf("manifest %s hashes to %s", id, got))
			continue
		}
		m, err := chunk.DecodeManifest(data)
		if err != nil {
			errs = append(errs, fmt.Errorf("peer %s: %w", p, err))
			continue
		}
		return m, data, nil
	}
	return nil, nil, fmt.Errorf("manifest %s: no connected peer has it (%d tried): %w", id, len(errs), errors.Join(append(errs, chunk.ErrNotFound)...))
}

// candidates are the connected peers, holders of the layer first.
func (fr *Fetcher) candidates(id cid.Cid) []peer.ID {
	h := fr.cfg.Host
	seen := map[peer.ID]bool{h.ID(): true}
	var out []peer.ID
	for _, p := range fr.cfg.Catalog.HoldersOf(id.String()) {
		if !seen[p] && p2p.Connected(h, p) {
			seen[p] = true
			out = append(out, p)
		}
	}
	for _, p := range h.Network().Peers() {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

// dialHolders connects to the hosts the catalogue says hold id and that
// are not connected now (after a partition or a restart, before the
// periodic redial gets there), each for at most 2 s, in parallel.
func (fr *Fetcher) dialHolders(ctx context.Context, id cid.Cid) {
	h := fr.cfg.Host
	var wg sync.WaitGroup
	for _, p := range fr.cfg.Catalog.HoldersOf(id.String()) {
		if p == h.ID() || p2p.Connected(h, p) || !fr.cfg.Gater.Allowed(p) {
			continue
		}
		wg.Go(func() {
			dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			h.Connect(dctx, peer.AddrInfo{ID: p}) // addresses from the peerstore
		})
	}
	wg.Wait()
}

// fetchChunks fetches the chunks of manifest id that the store lacks.
func (fr *Fetcher) fetchChunks(ctx context.Context, id cid.Cid, m *chunk.Manifest, name chunk.Name, emit api.Emit) (*fetch, error) {
	refs := m.UniqueRefs()
	have, err := fr.cfg.Store.HasMany(ctx, chunk.RefIDs(refs))
	if err != nil {
		return nil, err
	}
	if err := fr.cfg.Store.Reserve(missingBytes(refs, have)); err != nil {
		return nil, fmt.Errorf("layer %s: %w", id, err)
	}
	f := newFetch(fr.cfg.Host.ID(), id, refs, have, time.Now())
	fr.mu.Lock()
	if fr.fetches[id] != nil {
		fr.mu.Unlock()
		return nil, api.Conflictf("layer %s is already being fetched", id)
	}
	fr.fetches[id] = f
	close(fr.started) // watchers waiting for this host to fetch the layer
	fr.started = make(chan struct{})
	fr.mu.Unlock()
	defer func() {
		fr.mu.Lock()
		delete(fr.fetches, id)
		fr.mu.Unlock()
		f.end()
		fr.cfg.Announce.Notify()
	}()
	fr.cfg.Announce.Notify()
	return f, fr.runFetch(ctx, f, name, emit)
}

// missingBytes is what fetching the refs not had will write: their data
// plus 1/16 for pack headers and the index.
func missingBytes(refs []chunk.Ref, have []bool) int64 {
	var n int64
	for i, r := range refs {
		if !have[i] {
			n += int64(r.Size)
		}
	}
	return n + n/16
}

// runFetch keeps a worker on every connected peer until f is complete.
func (fr *Fetcher) runFetch(ctx context.Context, f *fetch, name chunk.Name, emit api.Emit) error {
	ctx, cancel := context.WithCancel(ctx)
	var storers, wg sync.WaitGroup
	for range storerCount {
		storers.Go(func() { fr.storer(ctx, f) })
	}
	defer func() { // workers stop, then the storers drain what they handed over
		cancel()
		wg.Wait()
		close(f.store)
		storers.Wait()
	}()
	tick := time.NewTicker(respawnEvery)
	defer tick.Stop()
	var reported time.Time
	report := func() {
		if time.Since(reported) < 200*time.Millisecond {
			return
		}
		reported = time.Now()
		f.mu.Lock()
		p := &api.Progress{Phase: "fetch", Done: f.done, Total: f.total, Peers: len(f.workers)}
		f.mu.Unlock()
		emit(api.Event{Progress: p})
	}
	for {
		f.mu.Lock()
		left, last, ferr := f.remaining, f.last, f.err
		f.mu.Unlock()
		if ferr != nil {
			return ferr
		}
		if left == 0 {
			reported = time.Time{}
			report()
			return nil
		}
		if time.Since(last) > fr.cfg.StallTimeout {
			return fmt.Errorf("%w: %d of %d chunks still missing and no connected peer sent any for %s; the layer stays incomplete, run fetch again when a host that has it is reachable", ErrStalled, left, len(f.refs), fr.cfg.StallTimeout)
		}
		for _, p := range fr.candidates(f.id) { // all at once: their order does not matter here
			if fr.mayOpen(p) {
				fr.spawn(ctx, &wg, f, p, name)
			}
		}
		report()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		case <-f.wait():
		}
	}
}

// spawn starts the watch of peer p and the workers it lacks
// (streamsPerPeer in all).
func (fr *Fetcher) spawn(ctx context.Context, wg *sync.WaitGroup, f *fetch, p peer.ID, name chunk.Name) {
	f.mu.Lock()
	running, watching := f.workers[p], f.watching[p]
	f.workers[p] = streamsPerPeer
	f.watching[p] = true
	f.mu.Unlock()
	if !watching {
		wg.Go(func() {
			err := fr.watch(ctx, f, p)
			if err != nil && ctx.Err() == nil {
				fr.cfg.Log.Debug("fetch: have-notes stopped", "layer", name.String(), "peer", p.String(), "err", err)
			}
			f.mu.Lock()
			delete(f.watching, p)
			f.mu.Unlock()
		})
	}
	for stream := running; stream < streamsPerPeer; stream++ {
		wg.Go(func() {
			err := fr.fetchFrom(ctx, f, p, stream)
			if err != nil && (ctx.Err() == nil || errors.Is(err, xchg.ErrProtocol)) { // a violation counts even as the fetch ends
				fr.cfg.Log.Debug("fetch worker stopped", "layer", name.String(), "peer", p.String(), "err", err)
				fr.streamEnded(p, err)
			}
			f.mu.Lock()
			if f.workers[p]--; f.workers[p] == 0 {
				delete(f.workers, p)
			}
			f.mu.Unlock()
		})
	}
}
