package node

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/time/rate"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
)

// Chunk scheduling: streamsPerPeer workers per peer each keep up to
// pipelineDepth batches of batchChunks chunks in flight on their own stream. Workers pick chunks the peer
// has and nobody is fetching yet, each from its own random starting point,
// so peers get disjoint work; when nothing unassigned is left (the endgame)
// an idle worker also asks for chunks another peer is still sending, and
// the first copy to arrive wins.
const (
	batchChunks    = 16
	pipelineDepth  = 8
	readTimeout    = 30 * time.Second
	badPeerBlock   = 10 * time.Minute
	respawnEvery   = 500 * time.Millisecond
	storerCount    = 2 // verify and store in parallel with reading
	streamsPerPeer = 2 // two streams: the peer serves and we read on two cores
)

// fetch is the state of one layer being fetched.
type fetch struct {
	id   cid.Cid
	refs []chunk.Ref

	mu        sync.Mutex
	have      []bool
	inflight  []uint8   // requests outstanding (at most 2: one more in the endgame)
	owner     []peer.ID // who was asked first
	avail     []uint16  // how many peers are known to have each chunk
	rank      int       // this host's place among the hosts fetching the layer
	parts     int       // how many hosts are fetching it (1: just us)
	remaining int
	done      int64 // bytes stored by this fetch
	total     int64 // bytes of the layer's distinct chunks
	fetched   int   // chunks stored by this fetch
	last      time.Time
	changed   chan struct{}   // closed on every change, then replaced
	workers   map[peer.ID]int // running workers per peer
	perPeer   map[peer.ID]int64
	err       error         // a local failure (full disk) that ends the fetch
	store     chan received // batches for the storers
}

// fail ends the fetch with a local error.
func (f *fetch) fail(err error) {
	f.mu.Lock()
	if f.err == nil {
		f.err = err
	}
	f.signal()
	f.mu.Unlock()
}

func newFetch(id cid.Cid, refs []chunk.Ref, have []bool, now time.Time) *fetch {
	f := &fetch{id: id, refs: refs, have: have, inflight: make([]uint8, len(refs)), owner: make([]peer.ID, len(refs)), avail: make([]uint16, len(refs)),
		last: now, changed: make(chan struct{}), workers: map[peer.ID]int{}, perPeer: map[peer.ID]int64{},
		store: make(chan received, 2*pipelineDepth), parts: 1}
	for i, r := range refs {
		f.total += int64(r.Size)
		if !have[i] {
			f.remaining++
		} else {
			f.done += int64(r.Size)
		}
	}
	return f
}

func (f *fetch) signal() {
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fetch) wait() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

// pick chooses up to max chunks for peer p, which has peerHas (all of the
// layer when complete), starting at *cursor. With endgame set it may choose
// chunks in flight at another peer.
//
// Rarest first: chunks no other peer is known to have come before chunks
// others could send too. And when several hosts fetch the layer at once,
// each takes from a complete peer (a seed) only its own share of the
// chunks: the hosts then trade shares, so the seed's upload carries each
// chunk about once instead of once per host.
func (f *fetch) pick(p peer.ID, peerHas []bool, complete bool, cursor *int, max int, endgame bool) []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []int
	n := len(f.refs)
	mine := func(i int) bool { return f.parts <= 1 || i%f.parts == f.rank }
	passes := []func(i int) bool{
		func(i int) bool { return f.avail[i] <= 1 && mine(i) },
		func(i int) bool { return f.avail[i] <= 1 },
		func(i int) bool { return true },
	}
	for pass, ok := range passes {
		if pass > 0 && complete && len(out) > 0 {
			// From a complete peer, other hosts' shares only once ours is
			// all here or on its way: they will trade them to us.
			break
		}
		for k := 0; k < n && len(out) < max; k++ {
			i := (*cursor + k) % n
			if !f.have[i] && peerHas[i] && f.inflight[i] == 0 && ok(i) {
				out = append(out, i)
				f.owner[i] = p
				f.inflight[i]++ // taken: a later pass must not take it again
			}
		}
	}
	for _, i := range out {
		f.inflight[i]--
	}
	if len(out) == 0 && endgame {
		for k := 0; k < n && len(out) < max; k++ {
			i := (*cursor + k) % n
			if !f.have[i] && peerHas[i] && f.inflight[i] == 1 && f.owner[i] != p {
				out = append(out, i)
			}
		}
	}
	for _, i := range out {
		f.inflight[i]++
	}
	if len(out) > 0 {
		*cursor = (out[len(out)-1] + 1) % n
	}
	return out
}

func (f *fetch) release(idx []int) {
	f.mu.Lock()
	for _, i := range idx {
		f.inflight[i]--
	}
	f.signal()
	f.mu.Unlock()
}

// stored marks chunks as in the store.
func (f *fetch) stored(p peer.ID, idx []int, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, i := range idx {
		f.inflight[i]--
		if f.have[i] {
			continue // a duplicate from the endgame
		}
		f.have[i] = true
		f.remaining--
		f.fetched++
		f.done += int64(f.refs[i].Size)
		f.perPeer[p] += int64(f.refs[i].Size)
	}
	f.last = now
	f.signal()
}

func (f *fetch) bitmap() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return packBits(f.have)
}

func packBits(bs []bool) []byte {
	b := make([]byte, (len(bs)+7)/8)
	for i, v := range bs {
		if v {
			b[i/8] |= 1 << (i % 8)
		}
	}
	return b
}

func unpackBits(b []byte, n int) ([]bool, error) {
	if len(b) != (n+7)/8 {
		return nil, fmt.Errorf("%w: bitmap of %d bytes for %d chunks", errProtocol, len(b), n)
	}
	out := make([]bool, n)
	for i := range out {
		out[i] = b[i/8]&(1<<(i%8)) != 0
	}
	return out, nil
}

// fetchFrom runs one worker on peer p until the layer is complete, the peer
// fails (a storer that catches it lying closes the connection), or ctx ends.
func (n *Node) fetchFrom(ctx context.Context, f *fetch, p peer.ID, stream int) error {
	c, err := n.dialXchg(ctx, p)
	if err != nil {
		return err
	}
	defer c.close()
	// When the fetch ends, a read from a peer that stalls ends with it.
	defer context.AfterFunc(ctx, func() { c.s.Reset() })()
	var lims []*rate.Limiter // --max-download, and a layer policy's cap
	for _, l := range []*rate.Limiter{n.down, capFrom(ctx)} {
		if l != nil {
			lims = append(lims, l)
		}
	}
	got := n.metrics.bytesIn.WithLabelValues(p.String())
	var peerHas, counted []bool
	var peerComplete bool
	var hasAt time.Time
	refresh := func() error {
		hasAt = time.Now()
		bm, err := c.ask(reqHave, f.id, (len(f.refs)+7)/8, readTimeout)
		if errors.Is(err, chunk.ErrNotFound) {
			peerHas = make([]bool, len(f.refs))
			return nil
		}
		if err != nil {
			return err
		}
		now, err := unpackBits(bm, len(f.refs))
		if err != nil {
			return err
		}
		if stream == 0 { // one count per peer, not per stream
			f.seen(counted, now)
			counted = now
		}
		peerHas = append(peerHas[:0], now...)
		peerComplete = true
		for _, v := range peerHas {
			peerComplete = peerComplete && v
		}
		return nil
	}
	if err := refresh(); err != nil {
		return err
	}
	defer func() {
		if counted != nil {
			f.seen(counted, make([]bool, len(f.refs)))
		}
	}()
	cursor := rand.IntN(len(f.refs))
	var pending [][]int
	defer func() {
		for _, b := range pending {
			f.release(b)
		}
	}()
	for {
		for len(pending) < pipelineDepth {
			b := f.pick(p, peerHas, peerComplete, &cursor, batchChunks, len(pending) == 0)
			if len(b) == 0 {
				break
			}
			ids := make([]cid.Cid, len(b))
			for k, i := range b {
				ids[k] = f.refs[i].CID
			}
			pending = append(pending, b)
			if err := writeReq(c.bw, reqChunks, encodeCIDs(ids)); err != nil {
				return err
			}
		}
		if len(pending) == 0 {
			f.mu.Lock()
			left := f.remaining
			f.mu.Unlock()
			if left == 0 {
				return nil
			}
			changed := f.wait()
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-changed:
			case <-time.After(respawnEvery):
			}
			if !peerComplete && time.Since(hasAt) >= 300*time.Millisecond {
				if err := refresh(); err != nil {
					return err
				}
			}
			continue
		}
		if err := c.bw.Flush(); err != nil {
			return err
		}
		b := pending[0]
		c.s.SetReadDeadline(time.Now().Add(readTimeout))
		rb := received{peer: p, idx: make([]int, 0, len(b)), data: make([][]byte, 0, len(b))}
		var missing []int
		for _, i := range b {
			st, data, err := readItem(c.br, chunk.MaxChunkSize, getBuf(int(f.refs[i].Size)))
			if err != nil {
				rb.free() // b is still pending: the deferred release covers it
				return fmt.Errorf("peer %s: %w", p, err)
			}
			if st == stMissing {
				peerHas[i] = false
				missing = append(missing, i)
				putBuf(data)
				continue
			}
			for _, lim := range lims {
				if err := lim.WaitN(ctx, len(data)); err != nil {
					putBuf(data)
					rb.free()
					return err
				}
			}
			rb.idx = append(rb.idx, i)
			rb.data = append(rb.data, data)
			n.stats.add(p, int64(len(data)), 0)
			got.Add(float64(len(data)))
		}
		pending = pending[1:]
		f.release(missing)
		// Verifying and storing happen on the storers, so this worker goes
		// straight back to reading the stream.
		select {
		case f.store <- rb:
		case <-ctx.Done():
			rb.release(f)
			return ctx.Err()
		}
	}
}

// received is a batch of chunks read from a peer, not yet verified.
type received struct {
	peer peer.ID
	idx  []int
	data [][]byte
}

// seen records a peer's new bitmap in the availability counts.
func (f *fetch) seen(old, now []bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range now {
		switch {
		case now[i] && (old == nil || !old[i]):
			f.avail[i]++
		case !now[i] && old != nil && old[i]:
			f.avail[i]--
		}
	}
}

// release gives the batch's chunks back to the scheduler and frees its buffers.
func (rb received) release(f *fetch) {
	f.release(rb.idx)
	rb.free()
}

func (rb received) free() {
	for _, d := range rb.data {
		putBuf(d)
	}
}

// storer verifies received chunks against their CIDs and stores them. A
// batch with a bad chunk gets its peer penalised and none of it stored.
func (n *Node) storer(ctx context.Context, f *fetch) {
	for rb := range f.store {
		ids := make([]cid.Cid, len(rb.idx))
		for k, i := range rb.idx {
			ids[k] = f.refs[i].CID
		}
		// The whole batch at once: hashing chunks side by side is several
		// times cheaper than one by one, and verifying is most of a fetch's
		// work.
		blocks, bad := chunk.VerifyMany(ids, rb.data)
		switch {
		case bad != nil:
			n.penalize(rb.peer, bad)
			rb.release(f)
		default:
			// Fetched chunks leave the page cache once synced (PutUncached).
			if err := n.db.PutUncached(ctx, blocks...); err != nil {
				n.log.Warn("fetch: store chunks", "err", err)
				f.fail(fmt.Errorf("store chunks: %w", err))
				rb.release(f)
				continue
			}
			n.metrics.chunksFetched.Add(float64(len(blocks)))
			f.stored(rb.peer, rb.idx, time.Now())
			rb.free()
		}
	}
}

// Chunk buffers up to the default maximum chunk size are reused.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 256<<10); return &b }}

func getBuf(n int) []byte {
	if n > 256<<10 {
		return make([]byte, 0, n)
	}
	return (*bufPool.Get().(*[]byte))[:0]
}

func putBuf(b []byte) {
	if cap(b) == 256<<10 {
		b = b[:0]
		bufPool.Put(&b)
	}
}

// penalize disconnects and blocks a peer that sent bad data.
func (n *Node) penalize(p peer.ID, why error) {
	n.log.Warn("peer sent bad data: disconnecting and blocking it", "peer", p.String(), "for", badPeerBlock.String(), "err", why)
	n.metrics.verifyFails.WithLabelValues(p.String()).Inc()
	n.gater.block(p, badPeerBlock)
	n.catalog.forget(p)
	n.host.Network().ClosePeer(p)
}

// shares sets this host's rank among the connected hosts fetching f's
// layer (its partial holders), which splits a seed's chunks between them.
func (n *Node) shares(f *fetch) {
	me := n.host.ID()
	ids := []peer.ID{me}
	for p, complete := range n.catalog.holdings(f.id.String()) {
		if !complete && p != me && len(n.host.Network().ConnsToPeer(p)) > 0 {
			ids = append(ids, p)
		}
	}
	slices.Sort(ids)
	f.mu.Lock()
	f.rank, f.parts = slices.Index(ids, me), len(ids)
	f.mu.Unlock()
}

// candidates are the connected peers, holders of the layer first.
func (n *Node) candidates(id cid.Cid) []peer.ID {
	seen := map[peer.ID]bool{n.host.ID(): true}
	var out []peer.ID
	for _, p := range n.catalog.holdersOf(id.String()) {
		if !seen[p] && len(n.host.Network().ConnsToPeer(p)) > 0 {
			seen[p] = true
			out = append(out, p)
		}
	}
	for _, p := range n.host.Network().Peers() {
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
func (n *Node) dialHolders(ctx context.Context, id cid.Cid) {
	var wg sync.WaitGroup
	for _, p := range n.catalog.holdersOf(id.String()) {
		if p == n.host.ID() || len(n.host.Network().ConnsToPeer(p)) > 0 || !n.gater.allowed(p) {
			continue
		}
		wg.Go(func() {
			dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			n.host.Connect(dctx, peer.AddrInfo{ID: p}) // addresses from the peerstore
		})
	}
	wg.Wait()
}

// fetchManifest gets a manifest from whichever peer has it, and checks it.
func (n *Node) fetchManifest(ctx context.Context, id cid.Cid) (*chunk.Manifest, []byte, error) {
	n.dialHolders(ctx, id)
	var errs []error
	for _, p := range n.candidates(id) {
		c, err := n.dialXchg(ctx, p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		data, err := c.ask(reqManifest, id, chunk.MaxManifestSize, readTimeout)
		c.close()
		if err != nil {
			errs = append(errs, fmt.Errorf("peer %s: %w", p, err))
			continue
		}
		if got := chunk.ManifestCID(data); !got.Equals(id) {
			n.penalize(p, fmt.Errorf("manifest %s hashes to %s", id, got))
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

// Fetch makes NAME:TAG complete on this host, as the cluster catalogue maps
// it, fetching only the chunks the store lacks.
func (n *Node) Fetch(ctx context.Context, ref string, emit Emit) (*api.FetchResult, error) {
	name, err := chunk.ParseName(ref)
	if err != nil {
		return nil, badRequest(err)
	}
	mp, ok := n.catalog.lookup(name.String())
	if !ok {
		return nil, fmt.Errorf("fetch %s: the cluster catalogue has no such layer (see `p2pimg layers --all`): %w", name, chunk.ErrNotFound)
	}
	return n.fetchMapping(ctx, name, mp, emit)
}

// fetchMapping makes layer name complete here as the manifest mp.CID.
func (n *Node) fetchMapping(ctx context.Context, name chunk.Name, mp Mapping, emit Emit) (*api.FetchResult, error) {
	id, err := cid.Decode(mp.CID)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	n.gcMu.RLock()
	defer n.gcMu.RUnlock()
	if l, err := n.db.GetLayer(ctx, name); err == nil && l.CID == mp.CID && l.State == chunk.Complete {
		return &api.FetchResult{Layer: l}, nil
	}
	m, err := n.manifest(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", name, err)
	}
	rec := layerRecord(name, id, m, chunk.Incomplete)
	rec.Publisher, rec.Published, rec.Signature, rec.Product, rec.Policy = mp.Publisher, mp.Published, mp.Sig, mp.Product, mp.Policy
	if err := n.db.PutLayer(ctx, rec); err != nil {
		return nil, fmt.Errorf("fetch %s: %w", name, err)
	}
	f, err := n.fetchChunks(ctx, id, m, name, emit)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", name, err)
	}
	// A stacked layer is complete when the layers under it are.
	for pid := m.Parent; pid.Defined(); {
		pm, err := n.manifest(ctx, pid)
		if err != nil {
			return nil, fmt.Errorf("fetch %s: parent layer %s: %w", name, pid, err)
		}
		pf, err := n.fetchChunks(ctx, pid, pm, name, emit)
		if err != nil {
			return nil, fmt.Errorf("fetch %s: parent layer %s: %w", name, pid, err)
		}
		f.fetched += pf.fetched
		for p, b := range pf.perPeer {
			f.perPeer[p] += b
		}
		pid = pm.Parent
	}
	rec.State = chunk.Complete
	commit := time.Now()
	if err := n.db.PutLayer(ctx, rec); err != nil { // syncs the chunks first
		return nil, fmt.Errorf("fetch %s: %w", name, err)
	}
	done := time.Now()
	n.metrics.fetchSeconds.Observe(done.Sub(start).Seconds())
	n.log.Info("layer fetched", "layer", name.String(), "cid", id.String(), "chunks", f.fetched, "bytes", f.done, "seconds", time.Since(start).Seconds())
	res := &api.FetchResult{Layer: rec, FetchedChunks: f.fetched, Peers: map[string]int64{},
		Seconds: done.Sub(start).Seconds(), CommitSeconds: done.Sub(commit).Seconds()}
	for p, b := range f.perPeer {
		res.Peers[p.String()] = b
		res.FetchedBytes += b
	}
	return res, nil
}

type capKey struct{}

// withCap caps the chunk bytes per second of the fetches run with ctx (a
// layer policy's bandwidth for background sync), on top of --max-download.
func withCap(ctx context.Context, bps int64) context.Context {
	if bps <= 0 {
		return ctx
	}
	return context.WithValue(ctx, capKey{}, limiter(bps))
}

func capFrom(ctx context.Context) *rate.Limiter {
	l, _ := ctx.Value(capKey{}).(*rate.Limiter)
	return l
}

// manifest is a manifest from the store, else fetched (and stored).
func (n *Node) manifest(ctx context.Context, id cid.Cid) (*chunk.Manifest, error) {
	m, err := n.db.GetManifest(ctx, id)
	if errors.Is(err, chunk.ErrNotFound) {
		var data []byte
		if m, data, err = n.fetchManifest(ctx, id); err == nil {
			err = n.db.PutManifest(ctx, id, data)
		}
	}
	return m, err
}

// fetchChunks fetches the chunks of manifest id that the store lacks.
func (n *Node) fetchChunks(ctx context.Context, id cid.Cid, m *chunk.Manifest, name chunk.Name, emit Emit) (*fetch, error) {
	refs, have, err := n.present(ctx, m)
	if err != nil {
		return nil, err
	}
	f := newFetch(id, refs, have, time.Now())
	n.fetchMu.Lock()
	if n.fetches[id] != nil {
		n.fetchMu.Unlock()
		return nil, &codedError{api.CodeConflict, fmt.Errorf("layer %s is already being fetched", id)}
	}
	n.fetches[id] = f
	n.fetchMu.Unlock()
	defer func() {
		n.fetchMu.Lock()
		delete(n.fetches, id)
		n.fetchMu.Unlock()
		n.announceSoon()
	}()
	n.announceSoon()
	return f, n.runFetch(ctx, f, name, emit)
}

// runFetch keeps a worker on every connected peer until f is complete.
func (n *Node) runFetch(ctx context.Context, f *fetch, name chunk.Name, emit Emit) error {
	ctx, cancel := context.WithCancel(ctx)
	var storers, wg sync.WaitGroup
	for range storerCount {
		storers.Go(func() { n.storer(ctx, f) })
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
		if time.Since(last) > n.cfg.StallTimeout {
			return fmt.Errorf("stalled: %d of %d chunks still missing and no connected peer sent any for %s; the layer stays incomplete, run fetch again when a host that has it is reachable", left, len(f.refs), n.cfg.StallTimeout)
		}
		n.shares(f)
		for _, p := range n.candidates(f.id) {
			f.mu.Lock()
			running := f.workers[p]
			f.workers[p] = streamsPerPeer
			f.mu.Unlock()
			for stream := running; stream < streamsPerPeer; stream++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					err := n.fetchFrom(ctx, f, p, stream)
					if err != nil && ctx.Err() == nil {
						n.log.Debug("fetch worker stopped", "layer", name.String(), "peer", p.String(), "err", err)
					}
					f.mu.Lock()
					if f.workers[p]--; f.workers[p] == 0 {
						delete(f.workers, p)
					}
					f.mu.Unlock()
				}()
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
