// Package fetch makes a layer complete on this host: it spreads the
// layer's missing chunks over every connected peer that has them, keeps a
// pipeline of requests on each, verifies every received chunk against its
// id before it is stored, penalises a peer that sends bad data, retries
// elsewhere, and caps bandwidth. Nothing reaches the store unverified.
package fetch

import (
	"math"
	"math/bits"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/xchg"
)

// Chunk scheduling: streamsPerPeer workers per peer each keep requests in
// flight on their own stream, as many as the stream's measured rate needs
// (depth.go). Workers pick chunks the peer has and nobody here is fetching
// yet, each from its own random starting point, so peers get disjoint
// work; when nothing unassigned is left (the endgame) an idle worker also
// asks for chunks another peer is still sending, and the first copy to
// arrive wins. What each peer has comes from its have-notes (watch.go).
const (
	readTimeout    = 30 * time.Second
	badPeerBlock   = 10 * time.Minute
	respawnEvery   = 500 * time.Millisecond
	storerCount    = 2 // verify and store in parallel with reading
	streamsPerPeer = 2 // two streams: the peer serves and we read on two cores
	// starveAfter is how long this host may receive nothing before it asks
	// a complete peer for chunks other fetchers already hold.
	starveAfter = time.Second
	// seedFallback is how long a fetch may go without progress before a
	// worker asks a complete peer for anything, first copies others asked
	// for included.
	seedFallback = 2 * time.Second
	// settleTime is how long a new fetch waits, at most, for the peers it
	// watches to say whether they fetch the layer too before it asks a
	// seed for first copies (its share depends on how many do).
	settleTime = 200 * time.Millisecond
	// idleCheck is how often an idle worker looks again without a change.
	idleCheck = 100 * time.Millisecond
	// lateAfter is how long a chunk may be in flight at one peer before an
	// idle worker asks another for it too, outside the endgame.
	lateAfter = 2 * time.Second
)

// view is what one peer holds of the layer, from its bitmap and notes.
type view struct {
	fetching bool // it sends notes: it is fetching the layer
	missing  bool // it lacks the manifest: it may be about to fetch the layer
	has      []bool
	hasBits  bitset // has, 64 to a word
	asked    []bool // chunks it asked a complete peer for, not stored yet
	held     int
	complete bool
}

// fetch is the state of one layer being fetched.
type fetch struct {
	self peer.ID
	id   cid.Cid
	refs []chunk.Ref

	mu        sync.Mutex
	have      []bool
	haveBits  bitset    // have, 64 to a word
	inflight  []uint8   // requests outstanding (at most 2: one more in the endgame)
	owner     []peer.ID // who was asked first
	askedAt   []uint32  // when, in ms since began; arrived once read (never late)
	avail     []uint16  // how many peers are known to have each chunk
	asked     []uint16  // how many peers asked a complete peer for it
	completes int       // complete peers among the views
	rank      int       // this host's place among the hosts fetching the layer
	parts     int       // how many hosts are fetching it (1: just us)
	views     map[peer.ID]*view
	mine      []bool  // chunks this host asked a complete peer for
	notes     noteLog // changes here, in order, for the watchers
	ended     bool    // the fetch is over: watchers end
	remaining int
	done      int64 // bytes stored by this fetch
	total     int64 // bytes of the layer's distinct chunks
	fetched   int   // chunks stored by this fetch
	dupBytes  int64 // bytes received twice (the endgame)
	began     time.Time
	last      time.Time
	changed   chan struct{}   // closed on every change, then replaced
	workers   map[peer.ID]int // running workers per peer
	watching  map[peer.ID]bool
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

func newFetch(self peer.ID, id cid.Cid, refs []chunk.Ref, have []bool, now time.Time) *fetch {
	n := len(refs)
	f := &fetch{self: self, rank: 0, parts: 1, id: id, refs: refs, have: have, haveBits: newBitset(have), inflight: make([]uint8, n), owner: make([]peer.ID, n), askedAt: make([]uint32, n), avail: make([]uint16, n),
		asked: make([]uint16, n), mine: make([]bool, n), views: map[peer.ID]*view{},
		began: now, last: now, changed: make(chan struct{}), workers: map[peer.ID]int{}, watching: map[peer.ID]bool{}, perPeer: map[peer.ID]int64{},
		store: make(chan received, 2*maxDepth)}
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

// setHave marks chunk i as here.
func (f *fetch) setHave(i int) {
	f.have[i] = true
	f.haveBits.set(i)
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

// end tells the watchers the fetch is over.
func (f *fetch) end() {
	f.mu.Lock()
	f.ended = true
	f.signal()
	f.mu.Unlock()
}

// pick chooses up to max chunks for peer p, starting at *cursor. With
// endgame set (the worker has nothing in flight) it may choose chunks in
// flight at another peer.
func (f *fetch) pick(p peer.ID, cursor *int, max int, endgame bool, now time.Time) []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := f.views[p]
	if v == nil || v.complete && f.settling(now) {
		return nil
	}
	n := len(f.refs)
	passes := f.peerPasses()
	if v.complete {
		passes = f.seedPasses(endgame, now)
	}
	var out []int
	for k, ok := range passes {
		from := *cursor
		if v.complete && k == 1 {
			// Others' first copies: not next to where their owner asks
			// next (it walks its share in order).
			from = rand.IntN(n)
		}
		for i := range wanted(v.hasBits, f.haveBits, from) {
			if len(out) >= max {
				break
			}
			if ok(i) && f.inflight[i] == 0 {
				out = append(out, i)
				f.owner[i] = p
				f.askedAt[i] = f.sinceBegan(now)
				f.inflight[i]++ // taken: a later pass must not take it again
				if v.complete && !f.mine[i] {
					f.mine[i] = true
					f.notes.add(xchg.Note{Index: i, Kind: xchg.NoteAsked})
				}
			}
		}
	}
	// A second request at a seed would take its upload from first copies
	// other hosts need: not while others fetch too, unless stalled.
	if len(out) == 0 && endgame && (!v.complete || f.parts == 1 || now.Sub(f.last) > seedFallback) {
		out = f.duplicates(p, v, *cursor, max, now)
	}
	if len(out) > 0 {
		*cursor = (out[len(out)-1] + 1) % n
		f.signal() // watchers send the asked-notes
	}
	return out
}

// duplicates picks up to max chunks peer p holds that another peer is
// sending, for a worker with nothing else to ask: the endgame. A copy
// asked twice is sent twice (the exchange has no cancel), so this waits
// for the true endgame, when every chunk still missing here is on its
// way, or for a request that is late (its peer slow or gone). Asking
// earlier made idle workers duplicate a quarter of what 16 fetchers
// received while every link was busy.
func (f *fetch) duplicates(p peer.ID, v *view, cursor, max int, now time.Time) []int {
	n := len(f.refs)
	last := true // every missing chunk is in flight
	for w, x := range f.haveBits {
		for x = ^x; x != 0 && last; x &= x - 1 {
			if i := w<<6 + bits.TrailingZeros64(x); i < n && f.inflight[i] == 0 {
				last = false
			}
		}
	}
	late := int64(f.sinceBegan(now)) - lateAfter.Milliseconds()
	var out []int
	for i := range wanted(v.hasBits, f.haveBits, cursor) {
		if len(out) >= max {
			break
		}
		if f.inflight[i] == 1 && f.owner[i] != p && (last || f.askedAt[i] != arrived && int64(f.askedAt[i]) < late) {
			out = append(out, i)
			f.inflight[i]++
		}
	}
	return out
}

// arrived marks chunks read from a peer, waiting to be verified and
// stored: not late, however long the storers take.
func (f *fetch) arrived(idx []int) {
	f.mu.Lock()
	for _, i := range idx {
		f.askedAt[i] = arrived
	}
	f.mu.Unlock()
}

// arrived in askedAt: the chunk is here, being stored.
const arrived = math.MaxUint32

// sinceBegan is now in milliseconds since the fetch began (askedAt's unit).
func (f *fetch) sinceBegan(now time.Time) uint32 {
	return uint32(max(0, now.Sub(f.began).Milliseconds()))
}

// fetchers is how many peers still fetching the layer hold chunk i.
func (f *fetch) fetchers(i int) int { return int(f.avail[i]) - f.completes }

// peerPasses are the rules, in order, for a peer still fetching: rarest
// first (chunks no other fetching peer has come before the rest).
func (f *fetch) peerPasses() []func(i int) bool {
	return []func(i int) bool{
		func(i int) bool { return f.fetchers(i) <= 1 },
		func(i int) bool { return true },
	}
}

// seedPasses are the rules, in order, for a complete peer (a seed).
//
// Its first copies come first: chunks no fetching peer holds and none has
// asked a complete peer for, so the seed sends each chunk once before any
// twice, spread over every fetcher. Each host takes its share (chunk i
// when i%parts == rank, among the hosts that send notes), and others'
// first copies only once every first copy of its share is here (or held
// by another fetcher), and with nothing else in flight there (their notes
// say which are taken; the shares keep hosts apart before notes arrive).
//
// A chunk one fetcher holds comes from a seed only when no first copy is
// left (to the host of the next share: a second copy), or when this host
// has received nothing for starveAfter, and only if no other host is
// asking a seed for it (every chunk asked of a complete peer is
// announced): so a seed sends a chunk at most twice before every fetcher
// has it. After seedFallback without progress, anything.
func (f *fetch) seedPasses(endgame bool, now time.Time) []func(i int) bool {
	starving, stalled := now.Sub(f.last) > starveAfter, now.Sub(f.last) > seedFallback
	firstLeft, mineLeft := false, false // first copies this host lacks: any; of its share
	first := func(i int) bool {
		if f.fetchers(i) > 0 {
			return false
		}
		firstLeft = true
		return f.asked[i] == 0
	}
	return []func(i int) bool{
		func(i int) bool {
			if i%f.parts != f.rank {
				return false
			}
			ok := first(i)
			mineLeft = mineLeft || firstLeft
			return ok
		},
		func(i int) bool { return first(i) && endgame && !mineLeft },
		func(i int) bool {
			next := (i%f.parts+1)%f.parts == f.rank
			return f.asked[i] == 0 && f.fetchers(i) == 1 && (!firstLeft && next || starving) || stalled
		},
	}
}

// settling says whether the fetch is new and some peer it watches has
// not yet said whether it fetches the layer.
func (f *fetch) settling(now time.Time) bool {
	if now.Sub(f.began) >= settleTime {
		return false
	}
	if len(f.views) < len(f.watching) {
		return true
	}
	for _, v := range f.views {
		if v.missing {
			return true
		}
	}
	return false
}

// release gives chunks back to the scheduler: their requests failed or
// the peer lacked them.
func (f *fetch) release(idx []int) {
	f.mu.Lock()
	for _, i := range idx {
		f.inflight[i]--
		if f.inflight[i] == 0 && f.mine[i] && !f.have[i] {
			f.mine[i] = false
			f.notes.add(xchg.Note{Index: i, Kind: xchg.NoteDropped})
		}
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
			f.dupBytes += int64(f.refs[i].Size) // a duplicate from the endgame
			continue
		}
		f.setHave(i)
		f.mine[i] = false
		f.notes.add(xchg.Note{Index: i, Kind: xchg.NoteHave})
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

// release gives the batch's chunks back to the scheduler and frees its buffers.
func (rb received) release(f *fetch) {
	f.release(rb.idx)
	rb.free()
}

func (rb received) bytes() int {
	n := 0
	for _, d := range rb.data {
		n += len(d)
	}
	return n
}

func (rb received) free() {
	for _, d := range rb.data {
		putBuf(d)
	}
}
