package layers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/ipfs/go-cid"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/tree"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/gossip"
)

// commitActivation makes the changes written into the layer active here
// (its overlay's upper directory and its disk images' deltas) a new layer
// on top of the version exposed. A disk image keeps every chunk of the
// base that no write touched, so only the changed parts are new chunks.
func (sv *Service) commitActivation(ctx context.Context, name chunk.Name, req api.CommitRequest, emit api.Emit) (*api.AddResult, error) {
	if req.Base != "" || req.Upper != "" {
		return nil, api.BadRequestf("commit %s: give --activation, or --base and --upper, not both", name)
	}
	active, err := chunk.ParseName(req.Activation)
	if err != nil {
		return nil, api.BadRequest(fmt.Errorf("commit %s: --activation: %w", name, err))
	}
	req.Activation = active.String()
	ch, err := sv.cfg.Held.Changed(ctx, req.Activation)
	if err != nil {
		return nil, fmt.Errorf("commit %s: %w", name, err)
	}
	baseID, err := cid.Decode(ch.CID)
	if err != nil {
		return nil, fmt.Errorf("commit %s: exposed manifest %q: %w", name, ch.CID, err)
	}
	bm, err := sv.cfg.Store.GetManifest(ctx, baseID)
	if err == nil {
		bm, err = chunk.Flat(ctx, sv.cfg.Store, bm)
	}
	if err != nil {
		return nil, fmt.Errorf("commit %s: base %s: %w", name, ch.CID, err)
	}
	if err := sv.complete(ctx, bm); err != nil {
		return nil, api.Conflict(fmt.Errorf("commit %s: %s (%s) %w; wait for its fetch to end", name, req.Activation, ch.CID, err))
	}
	m := &chunk.Manifest{Params: bm.Params, Parent: baseID}
	var res api.AddResult
	if n, _ := dirEntries(ch.Upper); n > 0 {
		up, err := tree.AddUpper(ctx, sv.cfg.Store, ch.Upper, bm.Params, baseID, progress(emit, "commit"))
		if err != nil {
			return nil, fmt.Errorf("commit %s: %w", name, err)
		}
		m, res.NewChunks, res.NewBytes = up.Manifest, up.NewChunks, up.NewBytes
		for _, s := range up.Skipped {
			emit(api.Event{Warning: fmt.Sprintf("skipped %s: %s (it still counts as a local change)", s.Path, s.Reason)})
			res.Skipped = append(res.Skipped, api.SkippedPath{Path: s.Path, Reason: s.Reason})
		}
	}
	var dones []func() error // what records the changes committed, once published
	if ch.UpperDone != nil && len(res.Skipped) == 0 {
		// (a path left out still counts as a local change: it is in no layer)
		dones = append(dones, ch.UpperDone)
	}
	if ch.Disks != nil {
		disks, disksDone, err := ch.Disks(ctx, bm.Params, func(ctx context.Context, blocks ...chunk.Block) error {
			for _, b := range blocks {
				if ok, _ := sv.cfg.Store.Has(ctx, b.CID()); !ok {
					res.NewChunks++
					res.NewBytes += int64(len(b.Data()))
				}
			}
			return sv.cfg.Store.Put(ctx, blocks...)
		})
		if err != nil {
			return nil, fmt.Errorf("commit %s: %w", name, err)
		}
		m = withEntries(m, bm, disks)
		dones = append(dones, disksDone)
	}
	done := func() error {
		var errs []error
		for _, d := range dones {
			errs = append(errs, d())
		}
		return errors.Join(errs...)
	}
	if len(m.Entries) == 0 {
		return nil, api.Conflictf("commit %s: nothing was changed in %s since it was exposed or last committed", name, req.Activation)
	}
	return sv.publishCommit(ctx, name, req.Activation, m, &res, done)
}

// publishCommit encodes and publishes a committed layer, refusing it when
// it changes a path the layer locks, then records the commit (done: the
// upper directory's content and the disks' writes no longer count as local
// changes).
func (sv *Service) publishCommit(ctx context.Context, name chunk.Name, layer string, m *chunk.Manifest, res *api.AddResult, done func() error) (*api.AddResult, error) {
	var tmpl gossip.Mapping
	if mp, ok := sv.cfg.Catalog.Lookup(layer); ok {
		tmpl.Product = mp.Product
		if lp, _ := gossip.LayerPolicy(mp.Policy); len(lp.Locked) > 0 {
			if p := touchesLocked(m, lp.Locked); p != "" {
				return nil, api.Conflict(fmt.Errorf("commit %s refused: it changes %s, which the layer policy of %s locks", name, p, layer))
			}
		}
	}
	enc, id, err := m.Encode()
	if err != nil {
		return nil, fmt.Errorf("commit %s: %w", name, err)
	}
	l, err := sv.publish(ctx, name, id, enc, m, tmpl)
	if err != nil {
		return nil, fmt.Errorf("commit %s: %w", name, err)
	}
	if err := done(); err != nil {
		return nil, fmt.Errorf("commit %s: published as %s, but recording the changes as committed failed: %w", name, id, err)
	}
	sv.cfg.Log.Info("activation committed", "layer", name.String(), "from", layer, "cid", id.String(), "new_bytes", res.NewBytes)
	res.Layer = l
	return res, nil
}

// complete reports whether every chunk of m is in the store.
func (sv *Service) complete(ctx context.Context, m *chunk.Manifest) error {
	refs := m.UniqueRefs()
	have, err := sv.cfg.Store.HasMany(ctx, chunk.RefIDs(refs))
	if err != nil {
		return err
	}
	missing := 0
	for _, h := range have {
		if !h {
			missing++
		}
	}
	if missing > 0 {
		return fmt.Errorf("lacks %d of its %d chunks here", missing, len(refs))
	}
	return nil
}

// withEntries is m with files (and the directories above them, as in
// base) put in, replacing entries of the same paths.
func withEntries(m, base *chunk.Manifest, files []chunk.Entry) *chunk.Manifest {
	byPath := map[string]chunk.Entry{}
	for _, e := range m.Entries {
		byPath[e.Path] = e
	}
	baseDirs := map[string]chunk.Entry{}
	for _, e := range base.Entries {
		if e.Type == chunk.Dir {
			baseDirs[e.Path] = e
		}
	}
	for _, f := range files {
		byPath[f.Path] = f
		for d := path.Dir(f.Path); d != "."; d = path.Dir(d) {
			if _, ok := byPath[d]; !ok {
				byPath[d] = baseDirs[d]
			}
		}
	}
	out := *m
	out.Entries = make([]chunk.Entry, 0, len(byPath))
	for _, e := range byPath {
		out.Entries = append(out.Entries, e)
	}
	slices.SortFunc(out.Entries, func(a, b chunk.Entry) int { return strings.Compare(a.Path, b.Path) })
	return &out
}

// dirEntries counts the entries of dir (0 when it does not exist).
func dirEntries(dir string) (int, error) {
	if dir == "" {
		return 0, nil
	}
	ents, err := os.ReadDir(dir)
	return len(ents), err
}
