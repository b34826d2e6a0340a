package node

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/ipfs/go-cid"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/oci"
	"github.com/p2pimg/p2pimg/chunk/tree"
	"github.com/p2pimg/p2pimg/node/api"
)

// maxStack bounds how many layers one image may be stacked from.
const maxStack = 64

// chain is the stack a layer stands on, base first, ending with m; every
// manifest must be in the local store.
func (n *Node) chain(ctx context.Context, m *chunk.Manifest) ([]*chunk.Manifest, error) {
	out := []*chunk.Manifest{m}
	seen := map[cid.Cid]bool{}
	for id := m.Parent; id.Defined(); {
		if seen[id] || len(out) >= maxStack {
			return nil, fmt.Errorf("layer stack: parent %s loops or is deeper than %d", id, maxStack)
		}
		seen[id] = true
		p, err := n.db.GetManifest(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("parent layer %s: %w", id, err)
		}
		out = append(out, p)
		id = p.Parent
	}
	slices.Reverse(out)
	return out, nil
}

// flat is the tree a layer represents: itself, or its stack composed.
func (n *Node) flat(ctx context.Context, m *chunk.Manifest) (*chunk.Manifest, error) {
	if !m.Parent.Defined() {
		return m, nil
	}
	st, err := n.chain(ctx, m)
	if err != nil {
		return nil, err
	}
	return chunk.Flatten(st), nil
}

// Commit captures an overlayfs upper directory as a new layer on top of
// base, refused when it touches a path the base's layer policy locks.
func (n *Node) Commit(ctx context.Context, req api.CommitRequest, emit Emit) (*api.AddResult, error) {
	name, err := chunk.ParseName(req.Name)
	if err != nil {
		return nil, badRequest(err)
	}
	if !filepath.IsAbs(req.Upper) {
		return nil, badRequestf("commit %s: upper directory %q must be absolute", name, req.Upper)
	}
	n.gcMu.RLock()
	defer n.gcMu.RUnlock()
	bl, bm, err := n.layer(ctx, req.Base)
	if err != nil {
		return nil, err
	}
	if bl.State != chunk.Complete {
		return nil, &codedError{api.CodeConflict, fmt.Errorf("commit %s: base %s is %s; fetch it first", name, bl.Name, bl.State)}
	}
	baseID, _ := cid.Decode(bl.CID)
	res, err := tree.AddUpper(ctx, n.db, req.Upper, bm.Params, baseID, progress(emit, "commit"))
	if err != nil {
		return nil, fmt.Errorf("commit %s: %w", name, err)
	}
	if mp, ok := n.catalog.lookup(bl.Name); ok && mp.CID == bl.CID {
		if lp, _ := layerPolicy(mp.Policy); len(lp.Locked) > 0 {
			if p := touchesLocked(res.Manifest, lp.Locked); p != "" {
				return nil, &codedError{api.CodeConflict, fmt.Errorf("commit %s refused: it changes %s, which the layer policy of %s locks", name, p, bl.Name)}
			}
		}
	}
	l, err := n.publish(ctx, name, res.CID, res.Encoded, res.Manifest, Mapping{Product: bl.Product})
	if err != nil {
		return nil, fmt.Errorf("commit %s: %w", name, err)
	}
	n.log.Info("layer committed", "layer", name.String(), "base", bl.Name, "cid", res.CID.String(), "new_bytes", res.NewBytes)
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
func (n *Node) Split(ctx context.Context, req api.SplitRequest) (*api.SplitResult, error) {
	if len(req.Layers) < 2 {
		return nil, badRequestf("split: give at least two layers")
	}
	common, err := chunk.ParseName(req.Common)
	if err != nil {
		return nil, badRequest(err)
	}
	n.gcMu.RLock()
	defer n.gcMu.RUnlock()
	var recs []chunk.Layer
	var flats []*chunk.Manifest
	for _, ref := range req.Layers {
		l, m, err := n.layer(ctx, ref)
		if err != nil {
			return nil, err
		}
		if l.State != chunk.Complete {
			return nil, &codedError{api.CodeConflict, fmt.Errorf("split: layer %s is %s; fetch it first", l.Name, l.State)}
		}
		if l.Name == common.String() {
			return nil, badRequestf("split: the common layer %s is one of the inputs", common)
		}
		f, err := n.flat(ctx, m)
		if err != nil {
			return nil, fmt.Errorf("split: %s: %w", l.Name, err)
		}
		recs, flats = append(recs, l), append(flats, f)
	}
	for i := 1; i < len(flats); i++ {
		if flats[i].Params.Hash != flats[0].Params.Hash {
			return nil, badRequestf("split: %s and %s use different hashes", recs[0].Name, recs[i].Name)
		}
	}
	cm, thin := chunk.SplitCommon(flats...)
	enc, commonID, err := cm.Encode()
	if err != nil {
		return nil, fmt.Errorf("split: common layer: %w", err)
	}
	cl, err := n.publish(ctx, common, commonID, enc, cm, Mapping{})
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
		tmpl := Mapping{Product: recs[i].Product, Policy: recs[i].Policy}
		l, err := n.publish(ctx, name, id, enc, t, tmpl)
		if err != nil {
			return nil, fmt.Errorf("split: %s: %w", recs[i].Name, err)
		}
		out.Layers = append(out.Layers, l)
	}
	n.log.Info("layers split", "common", common.String(), "cid", commonID.String(), "layers", req.Layers)
	return out, nil
}

// Rebase re-points the thin layer name at a new version of its base,
// refused with the paths named where the layer and the new base both
// change something (relative to the old base).
func (n *Node) Rebase(ctx context.Context, req api.RebaseRequest) (*chunk.Layer, error) {
	n.gcMu.RLock()
	defer n.gcMu.RUnlock()
	tl, tm, err := n.layer(ctx, req.Name)
	if err != nil {
		return nil, err
	}
	if !tm.Parent.Defined() {
		return nil, badRequestf("rebase %s: it is not stacked on another layer", tl.Name)
	}
	bl, bm, err := n.layer(ctx, req.Onto)
	if err != nil {
		return nil, err
	}
	if tl.State != chunk.Complete || bl.State != chunk.Complete {
		return nil, &codedError{api.CodeConflict, fmt.Errorf("rebase %s onto %s: both must be complete here; fetch them first", tl.Name, bl.Name)}
	}
	old, err := n.db.GetManifest(ctx, tm.Parent)
	if err == nil {
		old, err = n.flat(ctx, old)
	}
	if err != nil {
		return nil, fmt.Errorf("rebase %s: its current base: %w", tl.Name, err)
	}
	newFlat, err := n.flat(ctx, bm)
	if err != nil {
		return nil, fmt.Errorf("rebase %s: %w", tl.Name, err)
	}
	if clash := chunk.Conflicts(tm, old, newFlat); len(clash) > 0 {
		more := ""
		if len(clash) > 10 {
			clash, more = clash[:10], fmt.Sprintf(" and %d more", len(clash)-10)
		}
		return nil, &codedError{api.CodeConflict, fmt.Errorf("rebase %s onto %s refused: both change %s%s", tl.Name, bl.Name, strings.Join(clash, ", "), more)}
	}
	next := *tm
	next.Parent, _ = cid.Decode(bl.CID)
	enc, id, err := next.Encode()
	if err != nil {
		return nil, err
	}
	name, _ := chunk.ParseName(tl.Name)
	l, err := n.publish(ctx, name, id, enc, &next, Mapping{Product: tl.Product, Policy: tl.Policy})
	if err != nil {
		return nil, fmt.Errorf("rebase %s: %w", tl.Name, err)
	}
	n.log.Info("layer rebased", "layer", tl.Name, "onto", bl.Name, "cid", id.String())
	return &l, nil
}

// Import reads a container image (a `docker save` tar, or an OCI image
// layout as a directory or a tar) and publishes one layer per image layer,
// each stacked on the one before; the top one is named req.Name (default:
// the image's own reference), the others NAME-layerK:TAG.
func (n *Node) Import(ctx context.Context, req api.ImportRequest, emit Emit) (*api.ImportResult, error) {
	if !filepath.IsAbs(req.Path) {
		return nil, badRequestf("import: path %q must be absolute", req.Path)
	}
	fi, err := os.Stat(req.Path)
	if err != nil {
		return nil, badRequest(fmt.Errorf("import: %w", err))
	}
	tmp := filepath.Join(n.dataDir, "tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp(tmp, "import-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	owners := os.Geteuid() == 0
	dir := req.Path
	if !fi.IsDir() {
		dir = filepath.Join(work, "archive")
		os.Mkdir(dir, 0o700)
		f, err := os.Open(req.Path)
		if err != nil {
			return nil, badRequest(fmt.Errorf("import: %w", err))
		}
		_, err = oci.Untar(f, dir, false)
		f.Close()
		if err != nil {
			return nil, badRequest(fmt.Errorf("import %s: %w", req.Path, err))
		}
	}
	img, err := oci.Open(dir)
	if err != nil {
		return nil, badRequest(fmt.Errorf("import %s: %w", req.Path, err))
	}
	ref := req.Name
	if ref == "" {
		ref = img.Ref
	}
	name, err := chunk.ParseName(ref)
	if err != nil {
		return nil, badRequest(fmt.Errorf("import %s: the image is saved as %q; give a layer name with --name NAME[:TAG] (%v)", req.Path, img.Ref, err))
	}
	if len(img.Layers) == 0 || len(img.Layers) > maxStack {
		return nil, badRequestf("import %s: %d layers; want 1 to %d", req.Path, len(img.Layers), maxStack)
	}
	n.gcMu.RLock()
	defer n.gcMu.RUnlock()
	out := &api.ImportResult{}
	parent := cid.Undef
	for i := range img.Layers {
		ldir := filepath.Join(work, fmt.Sprintf("layer%d", i+1))
		if err := os.Mkdir(ldir, 0o755); err != nil {
			return nil, err
		}
		skipped, err := img.ExtractLayer(i, ldir, owners)
		if err != nil {
			return nil, badRequest(fmt.Errorf("import %s: %w", req.Path, err))
		}
		for _, s := range skipped {
			emit(api.Event{Warning: fmt.Sprintf("layer %d: skipped %s (devices and fifos are not stored)", i+1, s)})
		}
		res, err := tree.AddUpper(ctx, n.db, ldir, chunk.DefaultParams(), parent, progress(emit, fmt.Sprintf("layer %d of %d", i+1, len(img.Layers))))
		if err != nil {
			return nil, fmt.Errorf("import %s: layer %d: %w", req.Path, i+1, err)
		}
		lname := name
		if i < len(img.Layers)-1 {
			lname = chunk.Name{Repo: fmt.Sprintf("%s-layer%d", name.Repo, i+1), Tag: name.Tag}
		}
		l, err := n.publish(ctx, lname, res.CID, res.Encoded, res.Manifest, Mapping{})
		if err != nil {
			return nil, fmt.Errorf("import %s: layer %d: %w", req.Path, i+1, err)
		}
		out.Layers = append(out.Layers, l)
		parent = res.CID
		os.RemoveAll(ldir)
	}
	n.log.Info("image imported", "path", req.Path, "layer", name.String(), "layers", len(out.Layers))
	return out, nil
}
