package fetch

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/faults"
	"github.com/p2pimg/p2pimg/node/xchg"
)

// FetchChunk fetches one chunk of layer (a manifest id) now, for a read
// that needs it, ahead of any background fetch and outside the scheduler:
// it asks the holders of the layer first, then every connected peer, one
// at a time, until one answers or ctx ends. The bytes are verified against
// id before they are returned, and stored just after (Wait waits for
// that); a peer that sends bad ones is
// disconnected and blocked, as in a fetch. Safe for concurrent use; the
// caller bounds it with ctx. Background fetches run with Behind's context
// slow down meanwhile.
func (fr *Fetcher) FetchChunk(ctx context.Context, layer, id cid.Cid) ([]byte, error) {
	fr.demand.begin()
	defer fr.demand.end()
	var errs []error
	for _, p := range fr.candidates(layer) {
		if ctx.Err() != nil {
			break
		}
		data, err := fr.askChunk(ctx, p, id)
		if err != nil {
			if errors.Is(err, xchg.ErrProtocol) {
				fr.streamEnded(p, err)
			}
			errs = append(errs, fmt.Errorf("peer %s: %w", p, err))
			continue
		}
		b, err := chunk.Verify(id, data)
		if err != nil {
			fr.penalize(p, err)
			errs = append(errs, fmt.Errorf("peer %s: %w", p, err))
			continue
		}
		fr.bytesIn.WithLabelValues(p.String()).Add(float64(len(data)))
		fr.storeAfter(p, b)
		return data, nil
	}
	if err := ctx.Err(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		errs = append(errs, errors.New("no peer connected"))
	}
	return nil, fmt.Errorf("chunk %s: no peer supplied it: %w", id, errors.Join(errs...))
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

// askChunk requests one chunk from p: on a kept stream if there is one
// (once more on a new stream if that one fails: the peer may have closed
// it), else on a new stream, which is kept after the answer.
func (fr *Fetcher) askChunk(ctx context.Context, p peer.ID, id cid.Cid) ([]byte, error) {
	if c, ok := fr.asks.get(p); ok {
		if data, err := fr.askOn(ctx, c, p, id); err == nil || errors.Is(err, chunk.ErrNotFound) {
			return data, err
		}
	}
	c, err := xchg.Dial(ctx, fr.cfg.Host, p)
	if err != nil {
		return nil, err
	}
	return fr.askOn(ctx, c, p, id)
}

// askOn asks for one chunk on c, keeping c when the exchange ended cleanly.
func (fr *Fetcher) askOn(ctx context.Context, c *xchg.Conn, p peer.ID, id cid.Cid) ([]byte, error) {
	wait := 5 * time.Second
	if d, ok := ctx.Deadline(); ok {
		wait = time.Until(d)
	}
	c.SetReadTimeout(wait)
	err := c.RequestChunks([]cid.Cid{id})
	if err == nil {
		err = c.Flush()
	}
	var st byte
	var data []byte
	if err == nil {
		st, data, err = c.ReadChunk(chunk.MaxChunkSize, nil)
	}
	if err != nil {
		c.Reset()
		return nil, err
	}
	fr.asks.put(p, c)
	if st != xchg.StatusOK {
		return nil, chunk.ErrNotFound
	}
	return data, nil
}
