// Package layers is this host's own work on layers: add, checkout, rm,
// gc, verify, stats, common, and the stack operations (split, commit,
// rebase, import of container images). A layer made here is published: its
// manifest stored, its record written, and its signed mapping merged into
// the catalogue for the announcer. It never talks to peers; fetching is
// package fetch's.
package layers

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/tree"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/expose"
	"github.com/p2pimg/p2pimg/node/gossip"
	"github.com/p2pimg/p2pimg/node/notify"
)

// Store is the chunk store and layer records this service works on.
type Store interface {
	chunk.Store
	chunk.Catalog
	// Compact gives back the space of removed chunks; it returns the
	// bytes freed.
	Compact(ctx context.Context) (int64, error)
	// Reserve is nil when the store's disk has room for need more bytes
	// (and its reserve), else an error wrapping chunk.ErrNoSpace naming
	// the figures. It holds nothing back for the caller.
	Reserve(need int64) error
}

// Keeper says why a layer must stay on this host.
type Keeper interface {
	// Keeps is nil when this host may drop layer name (manifest id), else
	// the reason it must keep it.
	Keeps(ctx context.Context, name, id string) error
}

// Holder tells which layer versions this host exposes.
type Holder interface {
	// Held lists the layer versions exposed here or being brought up or
	// taken down (their chunks must stay; an exposed name may not be
	// removed). Safe to call at any time; reads durable records.
	Held(ctx context.Context) ([]expose.Held, error)
	// PruneViews removes the fallback view checkouts no held layer uses,
	// returning how many and their disk. Idempotent.
	PruneViews(ctx context.Context) (int, int64, error)
	// Disk is what the exposures keep in the data dir now: those
	// checkouts, disk deltas and overlay uppers.
	Disk() expose.Disk
	// Changed is what was written into layer's exposure here (for a
	// commit); api.Conflict when it is not exposed here.
	Changed(ctx context.Context, layer string) (expose.Changed, error)
}

// Config configures the layer service.
type Config struct {
	Store   Store
	Catalog *gossip.Catalog
	Key     crypto.PrivKey // signs the mappings this host publishes
	DataDir string         // imports unpack under DataDir/tmp
	Policy  Keeper
	Held    Holder   // nil: nothing is exposed (tests)
	GC      *GCGuard // shared with the fetcher
	Log     *slog.Logger
	// Announce is poked when this host published a layer.
	Announce *notify.Signal
	// Images keeps an imported image's original blobs for the registry
	// mirror (nil: not kept).
	Images ImageKeeper
	// ImportMaxBytes and ImportMaxRatio bound what an import may unpack
	// (default 64 GiB, and 200 bytes written per byte read); it also
	// leaves 256 MiB free on the data directory's disk.
	ImportMaxBytes, ImportMaxRatio int64
}

// ImageKeeper keeps the registry blobs of an image layout (package registry).
type ImageKeeper interface {
	// KeepImage stores and announces the layout's manifest, config and
	// layer blobs as they are, and tags the manifest as name. A layout it
	// cannot keep (no registry manifest) is a warning, not an error.
	// Every read goes through root (the unpacked layout).
	KeepImage(ctx context.Context, root *os.Root, name chunk.Name) (warning string, err error)
}

// Service does the layer work of this host.
type Service struct{ cfg Config }

// New returns the layer service.
func New(cfg Config) *Service { return &Service{cfg: cfg} }

// GCGuard keeps gc from deleting chunks that an add, a fetch or a checkout
// is using: those pin it (shared), gc takes it alone. Its zero value is
// ready to use.
type GCGuard struct{ mu sync.RWMutex }

// Pin holds gc off until unpin is called; pins do not exclude each other.
func (g *GCGuard) Pin() (unpin func()) {
	g.mu.RLock()
	return g.mu.RUnlock
}

// exclusive waits for every pin to end and holds new ones off.
func (g *GCGuard) exclusive() (release func()) {
	g.mu.Lock()
	return g.mu.Unlock
}

// progress returns a tree.Progress that emits at most every 100 ms, and always the end.
func progress(emit api.Emit, phase string) tree.Progress {
	var last time.Time
	return func(done, total int64) {
		if now := time.Now(); done == total || now.Sub(last) >= 100*time.Millisecond {
			last = now
			emit(api.Event{Progress: &api.Progress{Phase: phase, Done: done, Total: total}})
		}
	}
}

// publish stores a manifest, records it complete as name and announces
// the signed mapping; tmpl carries the product and policy to keep.
func (sv *Service) publish(ctx context.Context, name chunk.Name, id cid.Cid, encoded []byte, m *chunk.Manifest, tmpl gossip.Mapping) (chunk.Layer, error) {
	if err := sv.cfg.Store.PutManifest(ctx, id, encoded); err != nil {
		return chunk.Layer{}, err
	}
	l := chunk.NewLayer(name, id, m, chunk.Complete)
	mp := gossip.Mapping{Name: name.String(), CID: id.String(), Size: l.Size, Published: time.Now().UnixNano(), Product: tmpl.Product, Policy: tmpl.Policy}
	if old, ok := sv.cfg.Catalog.Lookup(name.String()); ok && mp.Published <= old.Published {
		mp.Published = old.Published + 1 // a new version always wins
	}
	mp, err := gossip.SignMapping(sv.cfg.Key, mp)
	if err != nil {
		return l, fmt.Errorf("sign: %w", err)
	}
	l.Publisher, l.Published, l.Signature, l.Product, l.Policy = mp.Publisher, mp.Published, mp.Sig, mp.Product, mp.Policy
	if err := sv.cfg.Store.PutLayer(ctx, l); err != nil {
		return l, err
	}
	if err := sv.cfg.Catalog.Merge(mp); err != nil {
		return l, fmt.Errorf("%s is recorded here but not announced to the cluster: %w", name, err)
	}
	sv.cfg.Announce.Notify()
	return l, nil
}

// Publish stores a layer made elsewhere on this host (a registry blob) and
// announces it as name, like a layer added here.
func (sv *Service) Publish(ctx context.Context, name chunk.Name, id cid.Cid, encoded []byte, m *chunk.Manifest) (chunk.Layer, error) {
	return sv.publish(ctx, name, id, encoded, m, gossip.Mapping{})
}

// layer looks up NAME:TAG and its manifest.
func (sv *Service) layer(ctx context.Context, ref string) (chunk.Layer, *chunk.Manifest, error) {
	name, err := chunk.ParseName(ref)
	if err != nil {
		return chunk.Layer{}, nil, api.BadRequest(err)
	}
	l, err := sv.cfg.Store.GetLayer(ctx, name)
	if err != nil {
		return l, nil, fmt.Errorf("%w (see `p2pimg layers`)", err)
	}
	id, err := cid.Decode(l.CID)
	if err != nil {
		return l, nil, fmt.Errorf("layer %s: record names %q: %w", name, l.CID, err)
	}
	m, err := sv.cfg.Store.GetManifest(ctx, id)
	if err != nil {
		return l, nil, fmt.Errorf("layer %s: %w", name, err)
	}
	return l, m, nil
}
