package layers

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/tree"
	"github.com/p2pimg/p2pimg/license"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/caller"
	"github.com/p2pimg/p2pimg/node/gossip"
	"github.com/p2pimg/p2pimg/policy"
)

func params(req api.AddRequest, path string, isFile bool) (chunk.Params, error) {
	p := tree.DefaultParams(path, isFile)
	if req.Chunking == "" && req.ChunkSize == "" && req.Hash == "" {
		return p, nil
	}
	mode := p.Mode
	if req.Chunking != "" {
		mode = chunk.Mode(req.Chunking)
	}
	size := p.Avg
	if req.ChunkSize != "" {
		s, err := chunk.ParseSize(req.ChunkSize)
		if err != nil {
			return p, err
		}
		size = s
	}
	hash, err := chunk.ParseHash(req.Hash)
	if err != nil {
		return p, err
	}
	return chunk.NewParams(mode, size, hash)
}

// Add builds a layer from a local path and records it as NAME:TAG.
func (sv *Service) Add(ctx context.Context, req api.AddRequest, emit api.Emit) (*api.AddResult, error) {
	name, err := chunk.ParseName(req.Name)
	if err != nil {
		return nil, api.BadRequest(err)
	}
	if !filepath.IsAbs(req.Path) {
		return nil, api.BadRequestf("add %s: path %q must be absolute", name, req.Path)
	}
	fsys, err := callerFS(ctx)
	if err != nil {
		return nil, err
	}
	defer fsys.Close()
	var fi os.FileInfo
	if err := fsys.Do(func() (err error) { fi, err = os.Lstat(req.Path); return err }); err != nil {
		return nil, api.BadRequest(fmt.Errorf("add %s: %w", name, err))
	}
	p, err := params(req, req.Path, fi.Mode().IsRegular())
	if err != nil {
		return nil, api.BadRequest(fmt.Errorf("add %s: %w", name, err))
	}
	if err := sv.roomFor(fsys, req.Path, fi); err != nil {
		return nil, fmt.Errorf("add %s: %w", name, err)
	}
	defer sv.cfg.GC.Pin()()
	res, err := tree.AddWith(ctx, sv.cfg.Store, req.Path, p, tree.AddOptions{Progress: progress(emit, "add"), As: fsys.Do})
	if err != nil {
		return nil, fmt.Errorf("add %s: %w", name, err)
	}
	for _, s := range res.Skipped {
		emit(api.Event{Warning: fmt.Sprintf("skipped %s: %s", s.Path, s.Reason)})
	}
	mp := gossip.Mapping{Product: req.Product}
	if req.Product != "" {
		if err := license.CheckProduct(req.Product); err != nil {
			return nil, api.BadRequest(fmt.Errorf("add %s: %w", name, err))
		}
	}
	if req.Policy != "" {
		lp, err := policy.ParseLayer([]byte(req.Policy))
		if err != nil {
			return nil, api.BadRequest(fmt.Errorf("add %s: %w", name, err))
		}
		mp.Policy, _ = json.Marshal(lp)
		if lp.Product != "" && mp.Product == "" {
			mp.Product = lp.Product
		}
	}
	l, err := sv.publish(ctx, name, res.CID, res.Encoded, res.Manifest, mp)
	if err != nil {
		return nil, fmt.Errorf("add %s: %w", name, err)
	}
	sv.cfg.Log.Info("layer added", "layer", name.String(), "cid", res.CID.String(), "size", l.Size, "new_bytes", res.NewBytes)
	out := &api.AddResult{Layer: l, NewChunks: res.NewChunks, NewBytes: res.NewBytes}
	for _, s := range res.Skipped {
		out.Skipped = append(out.Skipped, api.SkippedPath{Path: s.Path, Reason: s.Reason})
	}
	return out, nil
}

// roomFor refuses an add whose source would not fit on the store's disk:
// the bytes of its regular files plus 1/16 for pack headers and the
// index. Chunks already stored are counted too (the add cannot know them
// before it reads), so re-adding a large image on a nearly full disk is
// refused; gc first, or free space.
func (sv *Service) roomFor(fsys *caller.FS, path string, fi os.FileInfo) error {
	size := fi.Size()
	if fi.IsDir() {
		size = 0
		err := fsys.Do(func() error {
			return filepath.WalkDir(path, func(_ string, d fs.DirEntry, err error) error {
				if err != nil || !d.Type().IsRegular() {
					return nil // unreadable entries are the add's to report
				}
				if i, err := d.Info(); err == nil {
					size += i.Size()
				}
				return nil
			})
		})
		if err != nil {
			return err
		}
	} else if !fi.Mode().IsRegular() {
		size = 0 // a device: its size is not in its file info
	}
	return sv.cfg.Store.Reserve(size + size/16)
}

// callerFS is the file system with the rights of the API caller behind
// ctx (nil, the daemon's own, for root, the daemon's user and work no
// caller asked for).
func callerFS(ctx context.Context) (*caller.FS, error) {
	fsys, err := caller.Open(ctx)
	if err != nil {
		return nil, api.Forbidden(err)
	}
	return fsys, nil
}

// Checkout writes a complete layer into a local directory.
func (sv *Service) Checkout(ctx context.Context, req api.CheckoutRequest, emit api.Emit) (*api.CheckoutResult, error) {
	if !filepath.IsAbs(req.Dir) {
		return nil, api.BadRequestf("checkout: directory %q must be absolute", req.Dir)
	}
	defer sv.cfg.GC.Pin()()
	l, m, err := sv.layer(ctx, req.Name)
	if err != nil {
		return nil, err
	}
	fsys, err := callerFS(ctx)
	if err != nil {
		return nil, err
	}
	defer fsys.Close()
	if l.State != chunk.Complete {
		return nil, api.Conflict(fmt.Errorf("layer %s is %s: some chunks are missing; fetch it first", l.Name, l.State))
	}
	if m, err = chunk.Flat(ctx, sv.cfg.Store, m); err != nil {
		return nil, fmt.Errorf("checkout %s: %w", l.Name, err)
	}
	err = tree.Checkout(ctx, sv.cfg.Store, m, req.Dir, tree.CheckoutOptions{
		// Files belong to the caller (the kernel makes them so); only a
		// root caller gets the owners the layer records.
		Force: req.Force, Owners: os.Geteuid() == 0 && caller.Privileged(ctx), Progress: progress(emit, "checkout"), As: fsys.Do,
	})
	if err != nil {
		return nil, fmt.Errorf("checkout %s: %w", l.Name, err)
	}
	return &api.CheckoutResult{Layer: l, Dir: req.Dir}, nil
}

// Common compares this host's layers: identical files and shared chunks.
func (sv *Service) Common(ctx context.Context, refs []string) (*api.CommonResult, error) {
	if len(refs) < 2 {
		return nil, api.BadRequestf("common: name at least two layers")
	}
	var ms []*chunk.Manifest
	for _, ref := range refs {
		_, m, err := sv.layer(ctx, ref)
		if err == nil {
			m, err = chunk.Flat(ctx, sv.cfg.Store, m) // a stacked layer is compared as the image it represents
		}
		if err != nil {
			return nil, err
		}
		ms = append(ms, m)
	}
	r := chunk.Common(ms...)
	return &api.CommonResult{Layers: refs, CommonReport: r}, nil
}

// Layers lists this host's layers.
func (sv *Service) Layers(ctx context.Context) ([]chunk.Layer, error) {
	ls, err := sv.cfg.Store.Layers(ctx)
	if ls == nil {
		ls = []chunk.Layer{}
	}
	return ls, err
}

// Remove forgets NAME:TAG; its chunks go at the next gc unless another layer uses them.
func (sv *Service) Remove(ctx context.Context, ref string) error {
	name, err := chunk.ParseName(ref)
	if err != nil {
		return api.BadRequest(err)
	}
	if l, err := sv.cfg.Store.GetLayer(ctx, name); err == nil {
		if err := sv.cfg.Policy.Keeps(ctx, name.String(), l.CID); err != nil {
			return api.Conflict(fmt.Errorf("rm refused: %w", err))
		}
	}
	if err := sv.exposedHere(ctx, name.String()); err != nil {
		return err
	}
	if err := sv.cfg.Store.DeleteLayer(ctx, name); err != nil {
		return fmt.Errorf("%w (see `p2pimg layers`)", err)
	}
	sv.cfg.Log.Info("layer removed", "layer", name.String())
	return nil
}

// exposedHere refuses to drop a layer this host exposes, naming where.
func (sv *Service) exposedHere(ctx context.Context, layer string) error {
	if sv.cfg.Held == nil {
		return nil
	}
	held, err := sv.cfg.Held.Held(ctx)
	if err != nil {
		return fmt.Errorf("rm %s: %w", layer, err)
	}
	for _, h := range held {
		if h.Layer == layer && h.Exposed {
			me, _ := peer.IDFromPrivateKey(sv.cfg.Key)
			return api.Conflict(fmt.Errorf("rm refused: %s is exposed on this host (%s) at %s (mode %s); deactivate it first",
				layer, me, h.Path, h.Mode))
		}
	}
	return nil
}
