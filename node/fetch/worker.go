package fetch

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/faults"
	"github.com/p2pimg/p2pimg/node/xchg"
)

// worker is one stream to one peer, fetching chunks of f.
type worker struct {
	delivered bool // a batch brought chunks: the peer answers
	fr        *Fetcher
	f         *fetch
	p         peer.ID
	stream    int
	c         *xchg.Conn
	lims      []*rate.Limiter // --max-download, and a layer policy's cap
	got       prometheus.Counter

	pace    pace
	pending [][]int // requested batches, not answered yet
	first   int     // chunks the first request asks for (then the pace's batch)
}

// fetchFrom runs one worker on peer p until the layer is complete, the peer
// fails (a storer that catches it lying closes the connection), or ctx ends.
func (fr *Fetcher) fetchFrom(ctx context.Context, f *fetch, p peer.ID, stream int) error {
	c, err := xchg.Dial(ctx, fr.cfg.Host, p)
	if err != nil {
		return fmt.Errorf("peer %s: %w", p, err)
	}
	defer c.Close()
	// When the fetch ends, a read from a peer that stalls ends with it.
	defer context.AfterFunc(ctx, c.Reset)()
	w := &worker{fr: fr, f: f, p: p, stream: stream, c: c, got: fr.bytesIn.WithLabelValues(p.String())}
	for _, l := range []*rate.Limiter{fr.cfg.Down, capFrom(ctx)} {
		if l != nil {
			w.lims = append(w.lims, l)
		}
	}
	defer func() {
		for _, b := range w.pending {
			f.release(b)
		}
	}()
	return w.loop(ctx)
}

// loop keeps requests in flight (as many as the pace says) and reads their answers.
func (w *worker) loop(ctx context.Context) error {
	f := w.f
	cursor, first := start(ctx, len(f.refs), rand.IntN)
	w.first = first
	for {
		if err := w.fill(&cursor); err != nil {
			return err
		}
		if len(w.pending) == 0 {
			done, err := w.idle(ctx)
			if done || err != nil {
				return err
			}
			continue
		}
		if err := w.c.Flush(); err != nil {
			return fmt.Errorf("peer %s: %w", w.p, err)
		}
		if err := w.readBatch(ctx); err != nil {
			return err
		}
	}
}

// fill requests batches until the pipeline is full or nothing is left to ask.
func (w *worker) fill(cursor *int) error {
	f := w.f
	batch, depth := w.pace.size(float64(f.total) / float64(len(f.refs)))
	for len(w.pending) < depth {
		n := batch
		if w.first > 0 {
			n = w.first
		}
		now := time.Now()
		b := f.pick(w.p, cursor, n, len(w.pending) == 0, now)
		if len(b) == 0 {
			return nil // the first request stays small until it is sent
		}
		w.first = 0
		w.pace.sent(len(w.pending) == 0, now)
		ids := make([]cid.Cid, len(b))
		for k, i := range b {
			ids[k] = f.refs[i].CID
		}
		w.pending = append(w.pending, b)
		if err := w.c.RequestChunks(ids); err != nil {
			return fmt.Errorf("peer %s: %w", w.p, err)
		}
	}
	return nil
}

// idle waits for a change when there is nothing to ask this peer; done
// once the layer is complete.
func (w *worker) idle(ctx context.Context) (done bool, err error) {
	f := w.f
	f.mu.Lock()
	left := f.remaining
	f.mu.Unlock()
	if left == 0 {
		return true, nil
	}
	changed := f.wait()
	select {
	case <-ctx.Done():
		return true, ctx.Err()
	case <-changed:
	case <-time.After(idleCheck): // a seed's rules change with time
	}
	return false, nil
}

// readBatch reads the answers to the oldest batch and hands the chunks
// to the storers.
func (w *worker) readBatch(ctx context.Context) error {
	f, b := w.f, w.pending[0]
	w.c.SetReadTimeout(readTimeout)
	rb := received{peer: w.p, idx: make([]int, 0, len(b)), data: make([][]byte, 0, len(b))}
	var missing []int
	for _, i := range b {
		// The length is checked against the chunk's before any buffer is
		// allocated: a peer cannot make this host hold more than the chunk.
		size := int(f.refs[i].Size)
		st, data, err := w.c.ReadChunk(size, getBuf(size))
		if err == nil && st == xchg.StatusOK && len(data) != size {
			err = errBadLength
		}
		if err != nil {
			rb.free() // b is still pending: the deferred release covers it
			return fmt.Errorf("peer %s: %w", w.p, err)
		}
		if st == xchg.StatusMissing {
			f.lacks(w.p, i)
			missing = append(missing, i)
			putBuf(data)
			continue
		}
		for _, lim := range w.lims {
			if err := lim.WaitN(ctx, len(data)); err != nil {
				putBuf(data)
				rb.free()
				return err
			}
		}
		rb.idx = append(rb.idx, i)
		rb.data = append(rb.data, data)
		w.fr.cfg.Stats.Add(w.p, int64(len(data)), 0)
		w.got.Add(float64(len(data)))
	}
	w.pending = w.pending[1:]
	w.pace.read(rb.bytes(), time.Now(), len(w.pending) > 0)
	f.release(missing)
	f.arrived(rb.idx)
	if len(rb.idx) > 0 && !w.delivered { // once: it resets the peer's failures
		w.delivered = true
		w.fr.worked(w.p)
	}
	// Verifying and storing happen on the storers, so this worker goes
	// straight back to reading the stream.
	select {
	case f.store <- rb:
		return nil
	case <-ctx.Done():
		rb.release(f)
		return ctx.Err()
	}
}

// storer verifies received chunks against their CIDs and stores them. A
// batch with a bad chunk gets its peer penalised and none of it stored.
func (fr *Fetcher) storer(ctx context.Context, f *fetch) {
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
			fr.penalize(rb.peer, bad)
			rb.release(f)
		default:
			// Fetched chunks leave the page cache once synced (PutUncached).
			if err := fr.cfg.Store.PutUncached(ctx, blocks...); err != nil {
				fr.cfg.Log.Warn("fetch: store chunks", "err", err)
				f.fail(fmt.Errorf("store chunks: %w", err))
				rb.release(f)
				continue
			}
			fr.chunksFetched.Add(float64(len(blocks)))
			if fr.trace != nil {
				for _, id := range ids {
					fr.trace(faults.ChunkEvent{Stored: true, Peer: rb.peer.String(), CID: id.String()})
				}
			}
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
func (fr *Fetcher) penalize(p peer.ID, why error) {
	fr.cfg.Log.Warn("peer sent bad data: disconnecting and blocking it", "peer", p.String(), "for", badPeerBlock.String(), "err", why)
	fr.verifyFails.WithLabelValues(p.String()).Inc()
	fr.cfg.Gater.Block(p, badPeerBlock)
	fr.cfg.Catalog.Forget(p)
	fr.cfg.Host.Network().ClosePeer(p)
}
