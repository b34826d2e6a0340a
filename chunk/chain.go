package chunk

import (
	"context"
	"fmt"
	"slices"

	"github.com/ipfs/go-cid"
)

// MaxStack bounds how many layers one image may be stacked from.
const MaxStack = 64

// ManifestGetter reads stored manifests.
type ManifestGetter interface {
	// GetManifest returns a stored manifest, or an error wrapping ErrNotFound.
	GetManifest(ctx context.Context, id cid.Cid) (*Manifest, error)
}

// Chain is the stack a layer stands on, base first, ending with m; every
// manifest must be in g.
func Chain(ctx context.Context, g ManifestGetter, m *Manifest) ([]*Manifest, error) {
	out := []*Manifest{m}
	seen := map[cid.Cid]bool{}
	for id := m.Parent; id.Defined(); {
		if seen[id] || len(out) >= MaxStack {
			return nil, fmt.Errorf("layer stack: parent %s loops or is deeper than %d", id, MaxStack)
		}
		seen[id] = true
		p, err := g.GetManifest(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("parent layer %s: %w", id, err)
		}
		out = append(out, p)
		id = p.Parent
	}
	slices.Reverse(out)
	return out, nil
}

// Flat is the tree a layer represents: m itself, or its stack composed
// (Flatten of its Chain).
func Flat(ctx context.Context, g ManifestGetter, m *Manifest) (*Manifest, error) {
	if !m.Parent.Defined() {
		return m, nil
	}
	st, err := Chain(ctx, g, m)
	if err != nil {
		return nil, err
	}
	return Flatten(st), nil
}
