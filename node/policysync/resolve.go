package policysync

import (
	"context"
	"fmt"
	"sort"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/gossip"
	"github.com/p2pimg/p2pimg/policy"
)

// hostFacts is what resolution needs to know about a host.
type hostFacts struct {
	labels map[string]string
	policy policy.Host
	held   map[string]bool // manifest CIDs held complete
}

// facts gathers every known host: this one and those heard from.
func (sv *Service) facts(ctx context.Context) map[peer.ID]hostFacts {
	out := map[peer.ID]hostFacts{}
	for p, v := range sv.cfg.Catalog.Hosts() {
		out[p] = hostFacts{labels: v.Labels, policy: v.Policy, held: map[string]bool{}}
	}
	sv.mu.Lock()
	out[sv.cfg.ID] = hostFacts{labels: sv.cfg.Labels, policy: sv.host, held: map[string]bool{}}
	sv.mu.Unlock()
	for _, mp := range sv.cfg.Catalog.All() {
		for p, complete := range sv.cfg.Catalog.Holdings(mp.CID) {
			if f, ok := out[p]; ok && complete {
				f.held[mp.CID] = true
			}
		}
	}
	if ls, err := sv.cfg.Store.Layers(ctx); err == nil {
		for _, l := range ls {
			if l.State == chunk.Complete {
				out[sv.cfg.ID].held[l.CID] = true
			}
		}
	}
	return out
}

// resolve is the effective policy of mapping mp on host id.
func resolve(id peer.ID, f hostFacts, mp gossip.Mapping, all []gossip.Mapping) (policy.Effective, *policy.Conflict) {
	return resolveHeld(id, f, mp, heldSizes(f, all))
}

// heldBytes is what a host holds, by the mappings of the catalogue: in
// all, and by manifest.
type heldBytes struct {
	all   int64
	byCID map[string]int64
}

// heldSizes adds up the sizes of the mappings whose manifest f holds, once
// for all the layers a pass resolves.
func heldSizes(f hostFacts, all []gossip.Mapping) heldBytes {
	h := heldBytes{byCID: map[string]int64{}}
	for _, o := range all {
		if f.held[o.CID] {
			h.all += o.Size
			h.byCID[o.CID] += o.Size
		}
	}
	return h
}

// resolveHeld is resolve with the held sizes added up already: what the
// host holds besides mp's manifest counts against its quota.
func resolveHeld(id peer.ID, f hostFacts, mp gossip.Mapping, h heldBytes) (policy.Effective, *policy.Conflict) {
	lp, _ := gossip.LayerPolicy(mp.Policy)
	if lp.Product == "" {
		lp.Product = mp.Product
	}
	held := h.all - h.byCID[mp.CID]
	return policy.Resolve(policy.Subject{Layer: mp.Name, Size: mp.Size, Host: id.String(), Labels: f.labels, Held: held}, lp, f.policy)
}

// Effective is the effective policy of a layer on this host, or the
// conflict that refuses it (ok false: the cluster has no mapping for it).
func (sv *Service) Effective(ctx context.Context, layer string) (policy.Effective, *policy.Conflict, bool) {
	mp, ok := sv.cfg.Catalog.Lookup(layer)
	if !ok {
		return policy.Effective{}, nil, false
	}
	me := sv.cfg.ID
	e, c := resolve(me, sv.facts(ctx)[me], mp, sv.cfg.Catalog.All())
	return e, c, true
}

// PolicyShow is the effective policy of a layer on a host (this one when
// host is empty), or the conflict.
func (sv *Service) PolicyShow(ctx context.Context, name, host string) (*api.PolicyResult, error) {
	nm, err := chunk.ParseName(name)
	if err != nil {
		return nil, api.BadRequest(err)
	}
	mp, ok := sv.cfg.Catalog.Lookup(nm.String())
	if !ok {
		return nil, api.Coded(api.CodeNotFound, fmt.Errorf("no layer %s in the cluster catalogue", nm))
	}
	id := sv.cfg.ID
	if host != "" {
		if id, err = peer.Decode(host); err != nil {
			return nil, api.BadRequestf("--host %q: %v", host, err)
		}
	}
	f, ok := sv.facts(ctx)[id]
	if !ok {
		return nil, api.Coded(api.CodeNotFound, fmt.Errorf("host %s: not heard from", host))
	}
	lp, _ := gossip.LayerPolicy(mp.Policy)
	e, c := resolve(id, f, mp, sv.cfg.Catalog.All())
	r := &api.PolicyResult{Layer: mp.Name, Host: id.String(), LayerPolicy: lp, HostPolicy: f.policy, Conflict: c}
	if c == nil {
		r.Effective = &e
	}
	return r, nil
}

// PolicyCheck lists every host and layer pair that conflicts.
func (sv *Service) PolicyCheck(ctx context.Context) []api.PolicyResult {
	all := sv.cfg.Catalog.All()
	out := []api.PolicyResult{}
	for id, f := range sv.facts(ctx) {
		held := heldSizes(f, all)
		for _, mp := range all {
			if _, c := resolveHeld(id, f, mp, held); c != nil {
				out = append(out, api.PolicyResult{Layer: mp.Name, Host: id.String(), Conflict: c})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Layer != out[j].Layer {
			return out[i].Layer < out[j].Layer
		}
		return out[i].Host < out[j].Host
	})
	return out
}

// Keeps reports why this host must not drop a layer: its policy holds it
// here, or the cluster would fall below the layer's minimum copies.
func (sv *Service) Keeps(ctx context.Context, name string, id string) error {
	mp, ok := sv.cfg.Catalog.Lookup(name)
	if !ok || mp.CID != id {
		return nil
	}
	lp, _ := gossip.LayerPolicy(mp.Policy)
	if e, c, _ := sv.Effective(ctx, name); c == nil && e.Hold {
		return fmt.Errorf("layer %s: its policy holds it on this host (hold=%s); change the layer or host policy first", name, lp.Hold)
	}
	if lp.MinCopies > 0 {
		copies := 0
		for p, complete := range sv.cfg.Catalog.Holdings(mp.CID) {
			if complete && p != sv.cfg.ID {
				copies++
			}
		}
		if name, err := chunk.ParseName(name); err == nil {
			if l, err := sv.cfg.Store.GetLayer(ctx, name); err == nil && l.CID == mp.CID && l.State == chunk.Complete {
				copies++ // this host's own copy
			}
		}
		if copies <= lp.MinCopies {
			return fmt.Errorf("layer %s: the cluster holds %d complete copies and its policy wants at least %d (min_copies)", name, copies, lp.MinCopies)
		}
	}
	return nil
}

// Locked are the paths the effective policy of layer locks on this host
// (none when it has no policy here or conflicts).
func (sv *Service) Locked(ctx context.Context, layer string) []string {
	if eff, c, ok := sv.Effective(ctx, layer); ok && c == nil {
		return eff.Locked
	}
	return nil
}
