package fetch

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/faults"
	"github.com/p2pimg/p2pimg/node/xchg"
)

// FetchChunk fetches one chunk of layer (a manifest id) now, for a read
// that needs it, ahead of any background fetch and outside the scheduler:
// it asks the holders of the layer first, then every connected peer, and
// asks again, each peer after a short wait of its own (retryFirst, doubling
// to retryMax), until one supplies the chunk or ctx ends: a peer that
// refused the stream (it had as many open as it admits), reset it, timed
// out or did not have the chunk yet may well supply it a moment later. When
// no peer is connected it dials the layer's holders. The bytes are verified
// against id before they are returned, and stored just after (Wait waits
// for that); a peer that sends bad ones is disconnected and blocked, as in
// a fetch, and one that breaks the protocol is not asked again by this
// call. Safe for concurrent use: the asks share a bounded number of
// streams per peer (see peerStreams) and wait for one when all are busy.
// The caller bounds it with ctx. Background fetches run with Behind's
// context slow down meanwhile.
func (fr *Fetcher) FetchChunk(ctx context.Context, layer, id cid.Cid) ([]byte, error) {
	fr.demand.begin()
	defer fr.demand.end()
	var (
		order   []peer.ID             // peers that failed, first failure first
		failure = map[peer.ID]error{} // each one's latest failure
		shunned = map[peer.ID]bool{}  // lied or broke the protocol
		pause   = map[peer.ID]time.Duration{}
		retryAt = map[peer.ID]time.Time{} // not asked again before then
		idle    = retryFirst              // the wait while no peer can be asked
		poll    = pollFirst
	)
	failed := func(p peer.ID, err error) {
		if _, ok := failure[p]; !ok {
			order = append(order, p)
		}
		failure[p] = err
		pause[p] = min(max(2*pause[p], retryFirst), retryMax)
		retryAt[p] = time.Now().Add(jitter(pause[p]))
	}
	for ctx.Err() == nil {
		busy := false
		ps := slices.DeleteFunc(fr.candidates(layer), func(p peer.ID) bool { return shunned[p] })
		if len(ps) == 0 {
			// The holders may be back (a restart) before the periodic
			// redial reaches them.
			fr.dialHolders(ctx, layer)
			ps = slices.DeleteFunc(fr.candidates(layer), func(p peer.ID) bool { return shunned[p] })
		}
		for _, p := range ps {
			if ctx.Err() != nil {
				break
			}
			if time.Now().Before(retryAt[p]) {
				continue
			}
			data, err := fr.askChunk(ctx, p, id)
			if errors.Is(err, errNoStream) {
				busy = true
				continue
			}
			if err == nil {
				b, verr := chunk.Verify(id, data)
				if verr == nil {
					fr.bytesIn.WithLabelValues(p.String()).Add(float64(len(data)))
					fr.storeAfter(p, b)
					return data, nil
				}
				fr.penalize(p, verr)
				shunned[p], err = true, verr
			} else if errors.Is(err, xchg.ErrProtocol) {
				fr.streamEnded(p, err)
				shunned[p] = true
			}
			failed(p, err)
		}
		// Wait for the first of: a stream to a busy peer freeing up (an
		// ask takes about a round trip: a short poll), a peer's retry
		// time, or (no peer to ask) a peer connecting.
		var wait time.Duration
		set := false
		soonest := func(d time.Duration) {
			if !set || d < wait {
				wait, set = max(d, 0), true
			}
		}
		if busy {
			soonest(jitter(poll))
			poll = min(2*poll, pollMax)
		} else {
			poll = pollFirst
		}
		for _, p := range ps {
			if t, ok := retryAt[p]; ok && !shunned[p] {
				soonest(time.Until(t))
			}
		}
		if !set {
			soonest(jitter(idle))
			idle = min(2*idle, retryMax)
		}
		if !sleep(ctx, wait) {
			break
		}
	}
	errs := make([]error, 0, len(order)+1)
	for _, p := range order {
		errs = append(errs, fmt.Errorf("peer %s: %w", p, failure[p]))
	}
	if len(errs) == 0 {
		errs = append(errs, errors.New("no peer connected, or every one busy"))
	}
	errs = append(errs, context.Cause(ctx))
	return nil, fmt.Errorf("chunk %s: no peer supplied it in time: %w", id, errors.Join(errs...))
}

// Waits between the asks of one FetchChunk (each randomised down to half,
// so the reads that failed together do not all ask again together).
const (
	// retryFirst doubling to retryMax: before a peer that failed is asked
	// again, and while no peer is connected.
	retryFirst = 20 * time.Millisecond
	retryMax   = time.Second
	// pollFirst doubling to pollMax: before looking again for a free
	// stream to a peer whose on-demand streams are all in use.
	pollFirst = 500 * time.Microsecond
	pollMax   = 8 * time.Millisecond
)

// jitter is a random duration in [d/2, d].
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}

// sleep waits d; false when ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// storeAfter stores a chunk fetched on demand once its read has it: the
// read waits for the peer and the verification, not for the pack write
// and index batch, which queued behind the background fetch's writes (a
// tenth to a third of each on-demand fetch; tens of milliseconds when the
// disk was busy). A chunk that cannot be stored (a full disk) is fetched
// again by the next read or the background fetch, which then fails with
// the reason. Wait waits for these.
func (fr *Fetcher) storeAfter(p peer.ID, b chunk.Block) {
	unpin := fr.cfg.Pins.Pin() // gc leaves it be from now on
	fr.storing.Go(func() {
		defer unpin()
		if err := fr.cfg.Store.PutUncached(context.Background(), b); err != nil {
			fr.cfg.Log.Warn("on-demand fetch: store", "chunk", b.CID(), "err", err)
			return
		}
		fr.chunksFetched.Inc()
		if fr.trace != nil {
			fr.trace(faults.ChunkEvent{Stored: true, Peer: p.String(), CID: b.CID().String()})
		}
	})
}

// Wait waits until the chunks fetched on demand so far are stored (or
// failed to be): call it before the store closes.
func (fr *Fetcher) Wait() { fr.storing.Wait() }

// A peer's exchange server admits at most peerStreams streams from one
// peer and resets any beyond at once (xchg.ServerConfig.MaxStreams). This
// host's exchange streams to a peer come from two sides that count them
// apart and share no budget: every background fetch runs streamsPerPeer
// workers on the peer (f.workers, per fetch: two fetches at once make
// four; a manifest ask or a have-poll adds one for a while), and the
// on-demand asks below. Before these limits a burst of parallel reads
// opened one stream per chunk, the peer reset those past its limit, and
// the reads failed with EIO at once.
//
// So the budget is counted where the peer counts it: the exchange streams
// this host has open to the peer (xchgStreams), whoever opened them. An
// on-demand ask opens a new stream only while that count leaves
// streamHeadroom free (a fetch starting or a worker respawning then still
// gets its streams, before the peer sees them) and while the on-demand
// streams, the count less the background's, are fewer than keepPerPeer
// (all of them can then be kept between reads: a burst does not open and
// close streams). Otherwise it reuses a kept stream, or waits for one
// (FetchChunk polls: a free stream has no signal to wait on). The count
// and the open are done under the kept streams' lock, so on-demand asks
// never overshoot between themselves. What the lock cannot cover (a
// background worker opening a stream meanwhile, a stream the peer still
// counts just after this host closed it, a peer admitting fewer than the
// default) may still get a stream refused: FetchChunk retries that.
const (
	peerStreams    = 16 // xchg.ServerConfig.MaxStreams's default
	streamHeadroom = streamsPerPeer
	// streamOpenTimeout bounds opening a stream on a connection there
	// already is (normally local: the protocol is known, the peer is not
	// asked), which holds the kept streams' lock.
	streamOpenTimeout = time.Second
)

// errNoStream: no stream to the peer is free, and opening one would pass
// what the peer admits.
var errNoStream = errors.New("every on-demand stream to the peer is in use")

// askChunk requests one chunk from p on a stream from demandStream:
// errNoStream when none is free. When a kept stream fails (the peer may
// have closed it) it asks once more on the next, or a new one.
func (fr *Fetcher) askChunk(ctx context.Context, p peer.ID, id cid.Cid) ([]byte, error) {
	for {
		c, kept, err := fr.demandStream(ctx, p)
		if err != nil {
			return nil, err
		}
		data, err := fr.askOn(ctx, c, p, id)
		if err == nil || !kept || errors.Is(err, chunk.ErrNotFound) || errors.Is(err, xchg.ErrProtocol) || ctx.Err() != nil {
			return data, err
		}
	}
}

// demandStream is a stream to p for one ask: a kept one, else a new one
// if the peer admits it (see peerStreams), else errNoStream.
func (fr *Fetcher) demandStream(ctx context.Context, p peer.ID) (c *xchg.Conn, kept bool, err error) {
	if c, ok := fr.asks.get(p); ok {
		return c, true, nil
	}
	background := fr.backgroundStreams(p) // before the lock: fetches lock their own
	fr.asks.mu.Lock()
	defer fr.asks.mu.Unlock()
	open := xchgStreams(fr.cfg.Host, p)
	if open >= peerStreams-streamHeadroom || open-background >= keepPerPeer {
		return nil, false, errNoStream
	}
	// Never dials: a peer not connected is not asked here.
	octx, cancel := context.WithTimeout(network.WithNoDial(ctx, "on-demand ask"), streamOpenTimeout)
	defer cancel()
	c, err = xchg.Dial(octx, fr.cfg.Host, p)
	return c, false, err
}

// keep keeps c, a stream to p that has just answered, for the next ask;
// it closes it instead when the exchange streams to p are past the
// on-demand asks' room (background fetches started meanwhile), to give
// the room back.
func (fr *Fetcher) keep(p peer.ID, c *xchg.Conn) {
	if xchgStreams(fr.cfg.Host, p) > peerStreams-streamHeadroom {
		c.Close()
		return
	}
	fr.asks.put(p, c)
}

// xchgStreams counts the exchange streams this host has open to p: what
// p's server counts against its per-peer limit.
func xchgStreams(h host.Host, p peer.ID) int {
	n := 0
	for _, conn := range h.Network().ConnsToPeer(p) {
		for _, s := range conn.GetStreams() {
			if s.Protocol() == xchg.Proto && s.Stat().Direction == network.DirOutbound {
				n++
			}
		}
	}
	return n
}

// backgroundStreams is how many streams the background fetches run (or
// are about to) to p.
func (fr *Fetcher) backgroundStreams(p peer.ID) int {
	fr.mu.Lock()
	fs := slices.Collect(maps.Values(fr.fetches))
	fr.mu.Unlock()
	n := 0
	for _, f := range fs {
		f.mu.Lock()
		n += f.workers[p]
		f.mu.Unlock()
	}
	return n
}

// askOn asks for one chunk on c, keeping c when the exchange ended cleanly.
func (fr *Fetcher) askOn(ctx context.Context, c *xchg.Conn, p peer.ID, id cid.Cid) ([]byte, error) {
	wait := 5 * time.Second
	if d, ok := ctx.Deadline(); ok {
		wait = time.Until(d)
	}
	c.SetReadTimeout(wait)
	// A read whose ctx ends (the view unmounted) stops waiting at once.
	stop := context.AfterFunc(ctx, c.Reset)
	err := c.RequestChunks([]cid.Cid{id})
	if err == nil {
		err = c.Flush()
	}
	var st byte
	var data []byte
	if err == nil {
		st, data, err = c.ReadChunk(chunk.MaxChunkSize, nil)
	}
	if !stop() && err == nil {
		err = context.Cause(ctx) // the stream was reset: not kept
	}
	if err != nil {
		c.Reset()
		return nil, err
	}
	fr.keep(p, c)
	if st != xchg.StatusOK {
		return nil, chunk.ErrNotFound
	}
	return data, nil
}
