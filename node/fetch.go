package node

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
)

// Chunk scheduling: one worker per peer keeps up to pipelineDepth batches of
// batchChunks chunks in flight on one stream. Workers pick chunks the peer
// has and nobody is fetching yet, each from its own random starting point,
// so peers get disjoint work; when nothing unassigned is left (the endgame)
// an idle worker also asks for chunks another peer is still sending, and
// the first copy to arrive wins.
const (
	batchChunks   = 16
	pipelineDepth = 4
	readTimeout   = 30 * time.Second
	badPeerBlock  = 10 * time.Minute
	respawnEvery  = 500 * time.Millisecond
)

var errBadPeer = errors.New("peer sent a chunk that does not match its CID")

// fetch is the state of one layer being fetched.
type fetch struct {
	id   cid.Cid
	refs []chunk.Ref

	mu        sync.Mutex
	have      []bool
	inflight  []uint8
	remaining int
	done      int64 // bytes stored by this fetch
	total     int64 // bytes of the layer's distinct chunks
	fetched   int   // chunks stored by this fetch
	last      time.Time
	changed   chan struct{} // closed on every change, then replaced
	workers   map[peer.ID]bool
	perPeer   map[peer.ID]int64
}

func newFetch(id cid.Cid, refs []chunk.Ref, have []bool, now time.Time) *fetch {
	f := &fetch{id: id, refs: refs, have: have, inflight: make([]uint8, len(refs)),
		last: now, changed: make(chan struct{}), workers: map[peer.ID]bool{}, perPeer: map[peer.ID]int64{}}
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

// pick chooses up to max chunks for a peer that has peerHas, starting at
// *cursor. With endgame set it may choose chunks already in flight elsewhere.
func (f *fetch) pick(peerHas []bool, cursor *int, max int, endgame bool) []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []int
	n := len(f.refs)
	for k := 0; k < n && len(out) < max; k++ {
		i := (*cursor + k) % n
		if !f.have[i] && peerHas[i] && f.inflight[i] == 0 {
			out = append(out, i)
		}
	}
	if len(out) == 0 && endgame {
		for k := 0; k < n && len(out) < max; k++ {
			i := (*cursor + k) % n
			if !f.have[i] && peerHas[i] && f.inflight[i] < 2 {
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

// fetchFrom runs one peer's worker until the layer is complete, the peer
// fails, or ctx ends. It returns errBadPeer if the peer lied.
func (n *Node) fetchFrom(ctx context.Context, f *fetch, p peer.ID) error {
	c, err := n.dialXchg(ctx, p)
	if err != nil {
		return err
	}
	defer c.close()
	var peerHas []bool
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
		if peerHas, err = unpackBits(bm, len(f.refs)); err != nil {
			return err
		}
		peerComplete = true
		for _, v := range peerHas {
			peerComplete = peerComplete && v
		}
		return nil
	}
	if err := refresh(); err != nil {
		return err
	}
	cursor := rand.IntN(len(f.refs))
	var pending [][]int
	defer func() {
		for _, b := range pending {
			f.release(b)
		}
	}()
	for {
		for len(pending) < pipelineDepth {
			b := f.pick(peerHas, &cursor, batchChunks, len(pending) == 0)
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
		blocks := make([]chunk.Block, 0, len(b))
		got := make([]int, 0, len(b))
		var missing []int
		for _, i := range b {
			st, data, err := readItem(c.br, chunk.MaxChunkSize, nil)
			if err != nil {
				return fmt.Errorf("peer %s: %w", p, err)
			}
			if st == stMissing {
				peerHas[i] = false
				missing = append(missing, i)
				continue
			}
			blk, err := chunk.Verify(f.refs[i].CID, data)
			if err != nil {
				n.penalize(p, err)
				return fmt.Errorf("peer %s: %w: %v", p, errBadPeer, err)
			}
			if n.down != nil {
				if err := n.down.WaitN(ctx, len(data)); err != nil {
					return err
				}
			}
			blocks = append(blocks, blk)
			got = append(got, i)
			n.stats.add(p, int64(len(data)), 0)
			n.metrics.bytesIn.WithLabelValues(p.String()).Add(float64(len(data)))
		}
		pending = pending[1:]
		f.release(missing)
		if err := n.db.Put(ctx, blocks...); err != nil {
			f.release(got)
			return fmt.Errorf("store chunks: %w", err)
		}
		n.metrics.chunksFetched.Add(float64(len(blocks)))
		f.stored(p, got, time.Now())
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

// fetchManifest gets a manifest from whichever peer has it, and checks it.
func (n *Node) fetchManifest(ctx context.Context, id cid.Cid) (*chunk.Manifest, []byte, error) {
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
	m, err := n.db.GetManifest(ctx, id)
	if errors.Is(err, chunk.ErrNotFound) {
		var data []byte
		if m, data, err = n.fetchManifest(ctx, id); err == nil {
			err = n.db.PutManifest(ctx, id, data)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", name, err)
	}
	rec := layerRecord(name, id, m, chunk.Incomplete)
	rec.Publisher, rec.Published, rec.Signature = mp.Publisher, mp.Published, mp.Sig
	if err := n.db.PutLayer(ctx, rec); err != nil {
		return nil, fmt.Errorf("fetch %s: %w", name, err)
	}
	refs := m.UniqueRefs()
	ids := make([]cid.Cid, len(refs))
	for i, r := range refs {
		ids[i] = r.CID
	}
	have, err := n.db.HasMany(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", name, err)
	}
	f := newFetch(id, refs, have, time.Now())
	n.fetchMu.Lock()
	if n.fetches[id] != nil {
		n.fetchMu.Unlock()
		return nil, &codedError{api.CodeConflict, fmt.Errorf("fetch %s: already being fetched", name)}
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
	if err := n.runFetch(ctx, f, name, emit); err != nil {
		return nil, fmt.Errorf("fetch %s: %w", name, err)
	}
	rec.State = chunk.Complete
	if err := n.db.PutLayer(ctx, rec); err != nil { // syncs the chunks first
		return nil, fmt.Errorf("fetch %s: %w", name, err)
	}
	n.metrics.fetchSeconds.Observe(time.Since(start).Seconds())
	n.log.Info("layer fetched", "layer", name.String(), "cid", id.String(), "chunks", f.fetched, "bytes", f.done, "seconds", time.Since(start).Seconds())
	res := &api.FetchResult{Layer: rec, FetchedChunks: f.fetched, Peers: map[string]int64{}}
	for p, b := range f.perPeer {
		res.Peers[p.String()] = b
		res.FetchedBytes += b
	}
	return res, nil
}

// runFetch keeps a worker on every connected peer until f is complete.
func (n *Node) runFetch(ctx context.Context, f *fetch, name chunk.Name, emit Emit) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
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
		left, last := f.remaining, f.last
		f.mu.Unlock()
		if left == 0 {
			reported = time.Time{}
			report()
			return nil
		}
		if time.Since(last) > n.cfg.StallTimeout {
			return fmt.Errorf("stalled: %d of %d chunks still missing and no connected peer sent any for %s; the layer stays incomplete, run fetch again when a host that has it is reachable", left, len(f.refs), n.cfg.StallTimeout)
		}
		for _, p := range n.candidates(f.id) {
			f.mu.Lock()
			busy := f.workers[p]
			f.workers[p] = true
			f.mu.Unlock()
			if busy {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := n.fetchFrom(ctx, f, p)
				if err != nil && ctx.Err() == nil {
					n.log.Debug("fetch worker stopped", "layer", name.String(), "peer", p.String(), "err", err)
				}
				f.mu.Lock()
				delete(f.workers, p)
				f.mu.Unlock()
			}()
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
