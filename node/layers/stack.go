package layers

import (
	"context"
	"fmt"
	"path"
	"path/filepath"
	"strings"

	"github.com/ipfs/go-cid"
	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/tree"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/gossip"
)

// Commit captures an overlayfs upper directory as a new layer on top of
// base, refused when it touches a path the base's layer policy locks.
func (sv *Service) Commit(ctx context.Context, req api.CommitRequest, emit api.Emit) (*api.AddResult, error) {
	name, err := chunk.ParseName(req.Name)
	if err != nil {
		return nil, api.BadRequest(err)
	}
	if req.Activation != "" {
		defer sv.cfg.GC.Pin()()
		return sv.commitActivation(ctx, name, req, emit)
	}
	if !filepath.IsAbs(req.Upper) {
		return nil, api.BadRequestf("commit %s: upper directory %q must be absolute", name, req.Upper)
	}
	fsys, err := callerFS(ctx)
	if err != nil {
		return nil, err
	}
	defer fsys.Close()
	defer sv.cfg.GC.Pin()()
	bl, bm, err := sv.layer(ctx, req.Base)
	if err != nil {
		return nil, err
	}
	if bl.State != chunk.Complete {
		return nil, api.Conflict(fmt.Errorf("commit %s: base %s is %s; fetch it first", name, bl.Name, bl.State))
	}
	baseID, _ := cid.Decode(bl.CID)
	res, err := tree.AddWith(ctx, sv.cfg.Store, req.Upper, bm.Params, tree.AddOptions{Progress: progress(emit, "commit"), Parent: baseID, Upper: true, As: fsys.Do})
	if err != nil {
		return nil, fmt.Errorf("commit %s: %w", name, err)
	}
	if mp, ok := sv.cfg.Catalog.Lookup(bl.Name); ok && mp.CID == bl.CID {
		if lp, _ := gossip.LayerPolicy(mp.Policy); len(lp.Locked) > 0 {
			if p := touchesLocked(res.Manifest, lp.Locked); p != "" {
				return nil, api.Conflict(fmt.Errorf("commit %s refused: it changes %s, which the layer policy of %s locks", name, p, bl.Name))
			}
		}
	}
	l, err := sv.publish(ctx, name, res.CID, res.Encoded, res.Manifest, gossip.Mapping{Product: bl.Product})
	if err != nil {
		return nil, fmt.Errorf("commit %s: %w", name, err)
	}
	sv.cfg.Log.Info("layer committed", "layer", name.String(), "base", bl.Name, "cid", res.CID.String(), "new_bytes", res.NewBytes)
	return &api.AddResult{Layer: l, NewChunks: res.NewChunks, NewBytes: res.NewBytes}, nil
}

// touchesLocked returns the first locked path (absolute, as in policies)
// that a layer's entries change, add or white out; "" when none.
func touchesLocked(m *chunk.Manifest, locked []string) string {
	for _, e := range m.Entries {
		target, _, _ := chunk.Whiteout(e.Path)
		p := path.Clean("/" + target)
		if e.Type == chunk.Dir {
			continue // a directory entry is there for its children
		}
		for _, l := range locked {
			if p == l || strings.HasPrefix(p, l+"/") || strings.HasPrefix(l, p+"/") {
				return l
			}
		}
	}
	return ""
}

// Split makes a common layer of the files identical in all the given
// layers and publishes new versions of them holding only their own files
// on top of it. Each new version checks out byte-identical to the layer it
// replaces.
func (sv *Service) Split(ctx context.Context, req api.SplitRequest) (*api.SplitResult, error) {
	if len(req.Layers) < 2 {
		return nil, api.BadRequestf("split: give at least two layers")
	}
	common, err := chunk.ParseName(req.Common)
	if err != nil {
		return nil, api.BadRequest(err)
	}
	defer sv.cfg.GC.Pin()()
	var recs []chunk.Layer
	var flats []*chunk.Manifest
	for _, ref := range req.Layers {
		l, m, err := sv.layer(ctx, ref)
		if err != nil {
			return nil, err
		}
		if l.State != chunk.Complete {
			return nil, api.Conflict(fmt.Errorf("split: layer %s is %s; fetch it first", l.Name, l.State))
		}
		if l.Name == common.String() {
			return nil, api.BadRequestf("split: the common layer %s is one of the inputs", common)
		}
		f, err := chunk.Flat(ctx, sv.cfg.Store, m)
		if err != nil {
			return nil, fmt.Errorf("split: %s: %w", l.Name, err)
		}
		recs, flats = append(recs, l), append(flats, f)
	}
	for i := 1; i < len(flats); i++ {
		if flats[i].Params.Hash != flats[0].Params.Hash {
			return nil, api.BadRequestf("split: %s and %s use different hashes", recs[0].Name, recs[i].Name)
		}
	}
	cm, thin := chunk.SplitCommon(flats...)
	enc, commonID, err := cm.Encode()
	if err != nil {
		return nil, fmt.Errorf("split: common layer: %w", err)
	}
	cl, err := sv.publish(ctx, common, commonID, enc, cm, gossip.Mapping{})
	if err != nil {
		return nil, fmt.Errorf("split: %w", err)
	}
	out := &api.SplitResult{Common: cl}
	for i, t := range thin {
		t.Parent = commonID
		enc, id, err := t.Encode()
		if err != nil {
			return nil, fmt.Errorf("split: %s: %w", recs[i].Name, err)
		}
		name, _ := chunk.ParseName(recs[i].Name)
		tmpl := gossip.Mapping{Product: recs[i].Product, Policy: recs[i].Policy}
		l, err := sv.publish(ctx, name, id, enc, t, tmpl)
		if err != nil {
			return nil, fmt.Errorf("split: %s: %w", recs[i].Name, err)
		}
		out.Layers = append(out.Layers, l)
	}
	sv.cfg.Log.Info("layers split", "common", common.String(), "cid", commonID.String(), "layers", req.Layers)
	return out, nil
}

// Rebase re-points the thin layer name at a new version of its base,
// refused with the paths named where the layer and the new base both
// change something (relative to the old base).
func (sv *Service) Rebase(ctx context.Context, req api.RebaseRequest) (*chunk.Layer, error) {
	defer sv.cfg.GC.Pin()()
	tl, tm, err := sv.layer(ctx, req.Name)
	if err != nil {
		return nil, err
	}
	if !tm.Parent.Defined() {
		return nil, api.BadRequestf("rebase %s: it is not stacked on another layer", tl.Name)
	}
	bl, bm, err := sv.layer(ctx, req.Onto)
	if err != nil {
		return nil, err
	}
	if tl.State != chunk.Complete || bl.State != chunk.Complete {
		return nil, api.Conflict(fmt.Errorf("rebase %s onto %s: both must be complete here; fetch them first", tl.Name, bl.Name))
	}
	old, err := sv.cfg.Store.GetManifest(ctx, tm.Parent)
	if err == nil {
		old, err = chunk.Flat(ctx, sv.cfg.Store, old)
	}
	if err != nil {
		return nil, fmt.Errorf("rebase %s: its current base: %w", tl.Name, err)
	}
	newFlat, err := chunk.Flat(ctx, sv.cfg.Store, bm)
	if err != nil {
		return nil, fmt.Errorf("rebase %s: %w", tl.Name, err)
	}
	if clash := chunk.Conflicts(tm, old, newFlat); len(clash) > 0 {
		more := ""
		if len(clash) > 10 {
			clash, more = clash[:10], fmt.Sprintf(" and %d more", len(clash)-10)
		}
		return nil, api.Conflict(fmt.Errorf("rebase %s onto %s refused: both change %s%s", tl.Name, bl.Name, strings.Join(clash, ", "), more))
	}
	next := *tm
	next.Parent, _ = cid.Decode(bl.CID)
	enc, id, err := next.Encode()
	if err != nil {
		return nil, err
	}
	name, _ := chunk.ParseName(tl.Name)
	l, err := sv.publish(ctx, name, id, enc, &next, gossip.Mapping{Product: tl.Product, Policy: tl.Policy})
	if err != nil {
		return nil, fmt.Errorf("rebase %s: %w", tl.Name, err)
	}
	sv.cfg.Log.Info("layer rebased", "layer", tl.Name, "onto", bl.Name, "cid", id.String())
	return &l, nil
}
