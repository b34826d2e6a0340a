package policysync

import (
	"context"
	"fmt"

	"github.com/ipfs/go-cid"
	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/tree"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/expose"
)

// Diff shows how this host's view of layer (manifest cidStr, exposed as x)
// differs from the published manifest.
func (sv *Service) Diff(ctx context.Context, layer, cidStr string, x expose.Exposure) (*api.DiffResult, error) {
	m, err := sv.flat(ctx, cidStr)
	if err != nil {
		return nil, fmt.Errorf("diff %s: %w", layer, err)
	}
	if x.Mode.Overlaid() {
		changes, err := tree.UpperChanges(m, sv.cfg.Exposer.UpperDir(layer))
		if err != nil {
			return nil, fmt.Errorf("diff %s: %w", layer, err)
		}
		return &api.DiffResult{Layer: layer, CID: cidStr, Path: x.Path, Changes: changes}, nil
	}
	// The reconciler may swap a restored copy in while we read: look again.
	var changes []tree.Change
	for try := 0; ; try++ {
		if changes, err = tree.Diff(ctx, m, x.Path); err == nil || try == 3 {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("diff %s: %w", layer, err)
	}
	return &api.DiffResult{Layer: layer, CID: cidStr, Path: x.Path, Changes: changes}, nil
}

// flat is the tree manifest cidStr represents.
func (sv *Service) flat(ctx context.Context, cidStr string) (*chunk.Manifest, error) {
	id, err := cid.Decode(cidStr)
	if err != nil {
		return nil, fmt.Errorf("manifest id %q: %w", cidStr, err)
	}
	m, err := sv.cfg.Store.GetManifest(ctx, id)
	if err != nil {
		return nil, err
	}
	return chunk.Flat(ctx, sv.cfg.Store, m)
}
