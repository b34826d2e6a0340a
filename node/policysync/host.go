// Package policysync applies policies on this host: its host policy
// (kept in the store and gossiped), the effective policy of every layer
// here (layer first, then host; a conflict refuses the sync and says which
// rules conflict), the syncer that fetches what the effective policy says
// to hold, the drift check of mirror mode and locked paths, and the diff
// of an exposed view against its layer. It resolves and fetches; it never
// exposes a layer itself (package activate does) and never touches the
// network except through the fetcher it is given.
package policysync

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/node/expose"
	"github.com/p2pimg/p2pimg/node/gossip"
	"github.com/p2pimg/p2pimg/node/notify"
	"github.com/p2pimg/p2pimg/policy"
)

// Policies: a layer's policy travels in its signed mapping (set by whoever
// may publish it); a host's policy is set on the host, kept in its store
// and gossiped in its snapshot, so any host can resolve any pair. The
// policy syncer fetches what the effective policy says to hold; the
// activation reconciler refuses what it forbids and undoes drift in mirror
// mode.

const hostPolicyKey = "policy/host"

// Store is what the policy service reads and writes.
type Store interface {
	chunk.Store // the chunks a restore checks out
	chunk.ManifestGetter
	// GetLayer is the record of a name; chunk.ErrNotFound when absent.
	GetLayer(ctx context.Context, name chunk.Name) (chunk.Layer, error)
	// PutLayer writes a record durably.
	PutLayer(ctx context.Context, l chunk.Layer) error
	// Layers lists every record, sorted by name.
	Layers(ctx context.Context) ([]chunk.Layer, error)
	// LayerGen changes whenever a layer record is written or deleted;
	// equal values mean Layers would list the same records.
	LayerGen() uint64
	// Records are the small records under a key prefix.
	Records(prefix string) (map[string][]byte, error)
	// PutRecord writes a small record durably.
	PutRecord(key string, v []byte) error
}

// Fetcher makes a layer complete on this host.
type Fetcher interface {
	// Fetch makes layer name complete here as manifest mp.CID; it resumes
	// when retried.
	Fetch(ctx context.Context, name chunk.Name, mp gossip.Mapping, emit api.Emit) (*api.FetchResult, error)
}

// Config configures the policy service.
type Config struct {
	ID      peer.ID           // this host
	Key     crypto.PrivKey    // signs layer policies this host publishes
	Labels  map[string]string // this host's
	Cluster *cluster.Config
	Catalog *gossip.Catalog
	Store   Store
	Fetcher Fetcher
	Exposer *expose.Exposer
	Log     *slog.Logger
	// Announce is poked when what this host gossips changed; Reconcile
	// when activations must be looked at again.
	Announce, Reconcile *notify.Signal
	// HostPolicy is the policy file given at start (TOML); empty keeps the
	// one stored by `p2pimg policy set-host`.
	HostPolicy string
}

// Service is this host's policies and the syncer that applies them.
type Service struct {
	cfg  Config
	kick *notify.Signal

	mu        sync.Mutex
	host      policy.Host
	raw       json.RawMessage // canonical JSON of host, gossiped
	conflicts map[string]*policy.Conflict
	failed    map[string]time.Time // held layers whose fetch failed, when (tried again after policyRetry)
}

// policyRetry is how long the syncer leaves a held layer whose fetch
// failed (no peer had it, say) before it tries again.
const policyRetry = 30 * time.Second

// New loads this host's policy (the file given, else the stored one); it
// starts nothing.
func New(cfg Config) (*Service, error) {
	sv := &Service{cfg: cfg, kick: notify.New(), conflicts: map[string]*policy.Conflict{}, failed: map[string]time.Time{}}
	if err := sv.loadHostPolicy(cfg.HostPolicy); err != nil {
		return nil, fmt.Errorf("host policy: %w", err)
	}
	return sv, nil
}

// HostPolicyJSON is this host's policy in canonical JSON, as gossiped.
func (sv *Service) HostPolicyJSON() json.RawMessage {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	return sv.raw
}

// loadHostPolicy takes the policy file given at start (if any), else the
// one stored by `policy set-host`.
func (sv *Service) loadHostPolicy(text string) error {
	if text != "" {
		_, err := sv.setHostPolicy(text)
		return err
	}
	recs, err := sv.cfg.Store.Records(hostPolicyKey)
	if err != nil {
		return err
	}
	if b, ok := recs[hostPolicyKey]; ok {
		h, err := policy.DecodeHost(b)
		if err != nil {
			return fmt.Errorf("stored host policy: %w", err)
		}
		sv.mu.Lock()
		sv.host, sv.raw = h, b
		sv.mu.Unlock()
	}
	return nil
}

func (sv *Service) setHostPolicy(text string) (policy.Host, error) {
	h, err := policy.ParseHost([]byte(text))
	if err != nil {
		return h, api.BadRequest(err)
	}
	raw, _ := json.Marshal(h)
	if err := sv.cfg.Store.PutRecord(hostPolicyKey, raw); err != nil {
		return h, err
	}
	sv.mu.Lock()
	sv.host, sv.raw = h, raw
	sv.mu.Unlock()
	return h, nil
}

// SetHostPolicy replaces this host's policy (TOML text) and applies it.
func (sv *Service) SetHostPolicy(ctx context.Context, text string) (*policy.Host, error) {
	h, err := sv.setHostPolicy(text)
	if err != nil {
		return nil, err
	}
	sv.cfg.Log.Info("host policy set")
	sv.cfg.Announce.Notify()
	sv.kick.Notify()
	sv.cfg.Reconcile.Notify()
	return &h, nil
}

// SetLayerPolicy publishes NAME:TAG again, same content, with a new layer
// policy (TOML text). Only a host that may publish can.
func (sv *Service) SetLayerPolicy(ctx context.Context, name, text string) (*api.ClusterLayer, error) {
	nm, err := chunk.ParseName(name)
	if err != nil {
		return nil, api.BadRequest(err)
	}
	l, err := policy.ParseLayer([]byte(text))
	if err != nil {
		return nil, api.BadRequest(err)
	}
	if !sv.cfg.Cluster.MayPublish(sv.cfg.ID) {
		return nil, api.BadRequestf("policy set-layer %s: this host may not publish layers in this cluster (publishers = [...])", nm)
	}
	mp, ok := sv.cfg.Catalog.Lookup(nm.String())
	if !ok {
		return nil, api.Coded(api.CodeNotFound, fmt.Errorf("policy set-layer: no layer %s in the cluster catalogue", nm))
	}
	raw, _ := json.Marshal(l)
	mp.Policy, mp.Published, mp.Sig = raw, max(time.Now().UnixNano(), mp.Published+1), nil
	if l.Product != "" {
		mp.Product = l.Product
	}
	if mp, err = gossip.SignMapping(sv.cfg.Key, mp); err != nil {
		return nil, err
	}
	if err := sv.cfg.Catalog.Merge(mp); err != nil {
		return nil, fmt.Errorf("policy set-layer %s: %w", nm, err)
	}
	if rec, err := sv.cfg.Store.GetLayer(ctx, nm); err == nil && rec.CID == mp.CID {
		rec.Publisher, rec.Published, rec.Signature, rec.Product, rec.Policy = mp.Publisher, mp.Published, mp.Sig, mp.Product, mp.Policy
		if err := sv.cfg.Store.PutLayer(ctx, rec); err != nil {
			return nil, err
		}
	}
	sv.cfg.Announce.Notify()
	sv.kick.Notify()
	sv.cfg.Log.Info("layer policy set", "layer", nm.String())
	return &api.ClusterLayer{Name: mp.Name, CID: mp.CID, Size: mp.Size, Publisher: mp.Publisher, Product: mp.Product}, nil
}

// Conflicts are this host's policy conflicts, by layer.
func (sv *Service) Conflicts() map[string]*policy.Conflict {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	out := map[string]*policy.Conflict{}
	for k, v := range sv.conflicts {
		out[k] = v
	}
	return out
}
