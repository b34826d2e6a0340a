package activate

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/gossip"
)

// An access trace is the chunks a host's reads asked for in the first
// TraceWindow after it exposed a layer version lazily, in order. It is
// kept as a chunk (so peers fetch and verify it like any other), named in
// the host's state for that version, and kept by gc while the layer is
// exposed. The next hosts activating the version lazily fetch those
// chunks first, before the background fetch starts.

// traceMagic starts a trace's encoding; uvarint indices into the layer's
// UniqueRefs follow, in the order first read.
const traceMagic = "p2pimg-trace-1\n"

// maxTrace bounds the chunks one trace names.
const maxTrace = 1 << 16

// encodeTrace encodes the indices of a trace.
func encodeTrace(idx []int) []byte {
	b := []byte(traceMagic)
	for _, i := range idx {
		b = binary.AppendUvarint(b, uint64(i))
	}
	return b
}

// decodeTrace reads a trace of a layer with n unique chunks: indices in
// range, none repeated, at most maxTrace.
func decodeTrace(b []byte, n int) ([]int, error) {
	if !bytes.HasPrefix(b, []byte(traceMagic)) {
		return nil, errors.New("access trace: not a trace")
	}
	b = b[len(traceMagic):]
	seen := map[int]bool{}
	var out []int
	for len(b) > 0 {
		v, k := binary.Uvarint(b)
		if k <= 0 {
			return nil, errors.New("access trace: bad number")
		}
		b = b[k:]
		if v >= uint64(n) || seen[int(v)] || len(out) == maxTrace {
			return nil, fmt.Errorf("access trace: chunk index %d of a layer of %d chunks (repeated, out of range or too many)", v, n)
		}
		seen[int(v)] = true
		out = append(out, int(v))
	}
	return out, nil
}

// recording is a trace being recorded for one manifest.
type recording struct {
	layer string
	m     *chunk.Manifest // indexed only when the window ends: nothing is spent on it before
	order []cid.Cid
	seen  map[cid.Cid]bool
	open  bool
}

// tracer records access traces; safe for concurrent use.
type tracer struct {
	// recording counts the traces still open: every read through every
	// view asks NoteChunkRead, so it returns without the lock when none is.
	recording atomic.Int32
	mu        sync.Mutex
	recs      map[string]*recording // by manifest id
	done      map[string]string     // layer -> "manifest id/trace chunk id", for the reconciler to record
}

// startTrace records the chunks read through the view of manifest cidStr
// (flattened to m) for the trace window, then stores the trace.
func (r *Reconciler) startTrace(layer, cidStr string, m *chunk.Manifest) {
	t := &r.traces
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.recs[cidStr]; ok {
		return
	}
	t.recs[cidStr] = &recording{layer: layer, m: m, seen: map[cid.Cid]bool{}, open: true}
	t.recording.Add(1)
	time.AfterFunc(r.cfg.TraceWindow, func() { r.finishTrace(cidStr) })
}

// NoteChunkRead adds a chunk read through the view of manifest cidStr to
// the trace being recorded for it, if any. It must be quick.
func (r *Reconciler) NoteChunkRead(cidStr string, id cid.Cid) {
	t := &r.traces
	if t.recording.Load() == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	rec := t.recs[cidStr]
	if rec == nil || !rec.open || len(rec.order) == maxTrace || rec.seen[id] {
		return
	}
	rec.seen[id] = true
	rec.order = append(rec.order, id)
}

// finishTrace stores the trace of cidStr as a chunk and hands it to the
// reconciler, which names it in the layer's state.
func (r *Reconciler) finishTrace(cidStr string) {
	t := &r.traces
	t.mu.Lock()
	rec := t.recs[cidStr]
	rec.open = false
	t.recording.Add(-1)
	order, m := rec.order, rec.m
	rec.order, rec.seen, rec.m = nil, nil, nil
	t.mu.Unlock()
	index := map[cid.Cid]int{}
	for i, ref := range m.UniqueRefs() {
		index[ref.CID] = i
	}
	var idx []int
	for _, id := range order {
		if i, ok := index[id]; ok {
			idx = append(idx, i)
		}
	}
	if len(idx) == 0 {
		return
	}
	blk, err := chunk.Sum(encodeTrace(idx), m.Params.Hash)
	if err == nil {
		err = r.cfg.Store.Put(context.Background(), blk)
	}
	if err != nil {
		r.cfg.Log.Warn("access trace not kept", "layer", rec.layer, "err", err)
		return
	}
	t.mu.Lock()
	t.done[rec.layer] = cidStr + "/" + blk.CID().String()
	t.mu.Unlock()
	r.cfg.Log.Info("access trace recorded", "layer", rec.layer, "chunks", len(idx), "trace", blk.CID().String())
	r.cfg.Reconcile.Notify()
}

// noteTrace records a finished trace of e's version in its record and
// state. It runs on the reconciler goroutine.
func (r *Reconciler) noteTrace(e *record) {
	t := &r.traces
	t.mu.Lock()
	v, ok := t.done[e.Layer]
	delete(t.done, e.Layer)
	t.mu.Unlock()
	if !ok || v == e.Trace {
		return
	}
	e.Trace = v
	r.report(e, e.State, e.Detail)
}

// traceOf is the trace chunk e's record names for its current version.
func (e *record) traceOf() string {
	if m, tr, ok := strings.Cut(e.Trace, "/"); ok && m == e.CID {
		return tr
	}
	return ""
}

// prefetchTraced fetches the chunks another host's access trace of the
// activation's version names, in its order, several at a time, before
// the background fetch: the reads a boot makes first find them here.
// Failures only cost the head start.
func (r *Reconciler) prefetchTraced(ctx context.Context, a gossip.Activation, m *chunk.Manifest) {
	f := r.cfg.Fetcher
	layer, err := cid.Decode(a.CID)
	if err != nil {
		return
	}
	var traceID cid.Cid
	for _, h := range r.cfg.Catalog.Hosts() {
		for _, st := range h.States {
			if id, err := cid.Decode(st.Trace); err == nil && st.CID == a.CID {
				traceID = id
			}
		}
	}
	if !traceID.Defined() {
		return
	}
	tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	b, err := f.FetchChunk(tctx, layer, traceID)
	cancel()
	refs := m.UniqueRefs()
	var idx []int
	if err == nil {
		idx, err = decodeTrace(b, len(refs))
	}
	if err != nil {
		r.cfg.Log.Warn("access trace of a peer not used", "layer", a.Layer, "trace", traceID, "err", err)
		return
	}
	ids := make([]cid.Cid, len(idx))
	for k, i := range idx {
		ids[k] = refs[i].CID
	}
	have, err := r.cfg.Store.HasMany(ctx, ids)
	if err != nil {
		return
	}
	work := make(chan cid.Cid)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for id := range work {
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				f.FetchChunk(cctx, layer, id)
				cancel()
			}
		})
	}
	for k, id := range ids {
		if !have[k] && ctx.Err() == nil {
			work <- id
		}
	}
	close(work)
	wg.Wait()
	f.Wait() // stored before the background fetch looks for what is missing
	r.cfg.Log.Info("traced chunks fetched first", "layer", a.Layer, "chunks", len(ids), "trace", traceID)
}
