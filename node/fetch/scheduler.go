// Package fetch makes a layer complete on this host: it spreads the
// layer's missing chunks over every connected peer that has them, keeps a
// pipeline of requests on each, verifies every received chunk against its
// id before it is stored, penalises a peer that sends bad data, retries
// elsewhere, and caps bandwidth. Nothing reaches the store unverified.
package fetch

import (
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/xchg"
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
	// seedFallback is how long a fetch may go without progress before a
	// worker asks a complete peer for anything, shares or not.
	seedFallback = 2 * time.Second
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
	shareLeft int       // chunks of this host's share not stored yet
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
		store: make(chan received, 2*pipelineDepth)}
	f.setShare(0, 1)
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

// setShare makes this host's share the chunks i with i%parts == rank.
func (f *fetch) setShare(rank, parts int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if rank == f.rank && parts == f.parts {
		return
	}
	f.rank, f.parts, f.shareLeft = rank, parts, 0
	for i, h := range f.have {
		if !h && (parts <= 1 || i%parts == rank) {
			f.shareLeft++
		}
	}
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
// layer when complete), starting at *cursor. With endgame set (the
// worker has nothing in flight) it may choose chunks in flight at another
// peer.
//
// Rarest first: chunks no other peer is known to have come before chunks
// others could send too. And when several hosts fetch the layer at once,
// each takes from a complete peer (a seed) only what the seed alone has
// and falls in its own share: the hosts then trade shares, so the seed's
// upload carries each chunk once before any twice. Only a worker with
// nothing in flight asks a seed for more: the next host's share once its
// own is stored (a second copy, should that host be slow or gone), chunks
// other peers have too, and, when the fetch has stalled, anything.
func (f *fetch) pick(p peer.ID, peerHas []bool, complete bool, cursor *int, max int, endgame bool, now time.Time) []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []int
	n := len(f.refs)
	shared := f.parts > 1
	mine := func(i int) bool { return !shared || i%f.parts == f.rank }
	next := func(i int) bool { return i%f.parts == (f.rank+1)%f.parts }
	passes := []func(i int) bool{
		func(i int) bool { return f.avail[i] <= 1 && mine(i) },
		func(i int) bool { return f.avail[i] <= 1 },
		func(i int) bool { return true },
	}
	if complete && shared {
		stalled := now.Sub(f.last) > seedFallback
		passes = []func(i int) bool{
			passes[0],
			func(i int) bool { return endgame && f.shareLeft == 0 && f.avail[i] <= 1 && next(i) },
			func(i int) bool { return endgame && (f.avail[i] > 1 || stalled) },
		}
	}
	for _, ok := range passes {
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
	if len(out) == 0 && endgame && (!complete || !shared || f.shareLeft == 0) {
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
		if f.parts <= 1 || i%f.parts == f.rank {
			f.shareLeft--
		}
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
	return xchg.PackBits(f.have)
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
