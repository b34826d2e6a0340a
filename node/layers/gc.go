package layers

import (
	"context"
	"errors"
	"fmt"

	"github.com/ipfs/go-cid"
	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
)

// referenced returns the chunks and manifests every kept layer needs.
func (sv *Service) referenced(ctx context.Context) (map[cid.Cid]bool, map[cid.Cid]bool, error) {
	ls, err := sv.cfg.Store.Layers(ctx)
	if err != nil {
		return nil, nil, err
	}
	chunks, manifests := map[cid.Cid]bool{}, map[cid.Cid]bool{}
	if sv.cfg.Held != nil {
		// An exposed version stays whole even when its name now points
		// elsewhere (a newer version published, an rm racing the view).
		held, err := sv.cfg.Held.Held(ctx)
		if err != nil {
			return nil, nil, err
		}
		for _, h := range held {
			ls = append(ls, chunk.Layer{Name: h.Layer + " (exposed at " + h.Path + ")", CID: h.CID, State: chunk.Incomplete})
			if id, err := cid.Decode(h.Trace); err == nil {
				chunks[id] = true // its access trace, which peers may ask for
			}
		}
	}
	for _, l := range ls {
		id, err := cid.Decode(l.CID)
		if err != nil {
			return nil, nil, fmt.Errorf("layer %s: %w", l.Name, err)
		}
		// A layer keeps the layers it is stacked on.
		for id.Defined() && !manifests[id] {
			m, err := sv.cfg.Store.GetManifest(ctx, id)
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
func (sv *Service) GC(ctx context.Context) (*api.GCResult, error) {
	defer sv.cfg.GC.exclusive()()
	keep, keepManifests, err := sv.referenced(ctx)
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	res := &api.GCResult{}
	var drop []cid.Cid
	err = sv.cfg.Store.Walk(ctx, false, func(id cid.Cid, size int, _ []byte) error {
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
		if err := sv.cfg.Store.Delete(ctx, drop[:k]...); err != nil {
			return nil, fmt.Errorf("gc: %w", err)
		}
		res.RemovedChunks += k
		drop = drop[k:]
	}
	ms, err := sv.cfg.Store.Manifests(ctx)
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	for _, id := range ms {
		if !keepManifests[id] {
			if err := sv.cfg.Store.DeleteManifest(ctx, id); err != nil {
				return nil, fmt.Errorf("gc: %w", err)
			}
			res.RemovedManifests++
		}
	}
	if err := sv.cfg.Store.Sync(); err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	freed, err := sv.cfg.Store.Compact(ctx)
	if err != nil {
		return nil, fmt.Errorf("gc: reclaim space: %w", err)
	}
	res.ReclaimedBytes = freed
	if sv.cfg.Held != nil {
		if res.RemovedViews, res.RemovedViewBytes, err = sv.cfg.Held.PruneViews(ctx); err != nil {
			return nil, fmt.Errorf("gc: %w", err)
		}
	}
	sv.cfg.Log.Info("gc done", "removed_chunks", res.RemovedChunks, "removed_bytes", res.RemovedBytes)
	return res, nil
}

// Verify re-hashes every stored chunk, removes the corrupt ones and marks
// the layers that used them incomplete, so they are fetched again.
func (sv *Service) Verify(ctx context.Context, emit api.Emit) (*api.VerifyResult, error) {
	defer sv.cfg.GC.exclusive()() // nothing may read a chunk we are about to remove
	st, err := sv.cfg.Store.Stats(ctx, nil)
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
					sv.cfg.Log.Warn("corrupt chunk", "cid", id.String(), "err", err)
					corrupt = append(corrupt, id)
				}
			}
		}
		res.Checked += int64(len(ids))
		prog(res.Checked, max(st.Chunks, res.Checked))
		ids, datas, buf = ids[:0], datas[:0], buf[:0]
	}
	err = sv.cfg.Store.Walk(ctx, true, func(id cid.Cid, _ int, data []byte) error {
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
	if err := sv.cfg.Store.Delete(ctx, corrupt...); err != nil {
		return nil, fmt.Errorf("verify: remove corrupt chunks: %w", err)
	}
	bad := map[cid.Cid]bool{}
	for _, id := range corrupt {
		bad[id] = true
		res.Corrupt = append(res.Corrupt, id.String())
	}
	ls, err := sv.cfg.Store.Layers(ctx)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	for _, l := range ls {
		id, _ := cid.Decode(l.CID)
		m, err := sv.cfg.Store.GetManifest(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("verify: layer %s: %w", l.Name, err)
		}
		if usesAny(m, bad) && l.State == chunk.Complete {
			l.State = chunk.Incomplete
			if err := sv.cfg.Store.PutLayer(ctx, l); err != nil {
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
func (sv *Service) Stats(ctx context.Context) (*api.Stats, error) {
	ls, err := sv.cfg.Store.Layers(ctx)
	if err != nil {
		return nil, err
	}
	// Chunks no kept layer references are dead too: gc removes them.
	keep, _, err := sv.referenced(ctx)
	if err != nil {
		return nil, err
	}
	st, err := sv.cfg.Store.Stats(ctx, func(id cid.Cid) bool { return keep[id] })
	if err != nil {
		return nil, err
	}
	out := &api.Stats{Layers: len(ls), Chunks: st.Chunks, StoredBytes: st.StoredBytes, AllocatedBytes: st.AllocatedBytes, DeadBytes: st.DeadBytes}
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
	if sv.cfg.Held != nil {
		d := sv.cfg.Held.Disk()
		out.ViewBytes, out.DeltaBytes, out.UpperBytes = d.Views, d.Deltas, d.Uppers
	}
	return out, nil
}
