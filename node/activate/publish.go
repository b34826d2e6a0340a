package activate

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/gossip"
)

// Activate publishes an activation: one signed by an operator (req.Signed),
// or one for this host alone that the daemon signs itself.
func (r *Reconciler) Activate(ctx context.Context, req api.ActivateRequest) (*api.ActivateResult, error) {
	var a gossip.Activation
	if len(req.Signed) > 0 {
		dec := json.NewDecoder(bytes.NewReader(req.Signed))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&a); err != nil {
			return nil, api.BadRequestf("activation: %v", err)
		}
	} else {
		if req.Hosts != "self" && req.Hosts != r.cfg.Host.ID().String() {
			return nil, api.BadRequestf("activating other hosts needs an operator key (--key FILE or P2PIMG_OPERATOR_KEY); without one a host may only act on itself (--hosts self)")
		}
		name, err := chunk.ParseName(req.Layer)
		if err != nil {
			return nil, api.BadRequest(err)
		}
		id, err := r.ResolveLayer(ctx, name.String())
		if err != nil {
			return nil, err
		}
		a = gossip.Activation{Layer: name.String(), CID: id, At: req.At, Hosts: r.cfg.Host.ID().String(), Maps: req.Maps, Lazy: req.Lazy, Op: req.Op, Time: time.Now().UnixNano()}
		if a, err = gossip.SignActivation(r.cfg.Key, a); err != nil {
			return nil, err
		}
	}
	if err := gossip.CheckActivation(&a, r.cfg.Cluster); err != nil {
		return nil, api.BadRequest(err)
	}
	targets := r.targets(a)
	if len(targets) == 0 {
		return nil, api.BadRequestf("--hosts %q selects no known host (%d known); nothing was published: check the peer ids or labels with `p2pimg status` or `p2pimg peers`", a.Hosts, r.knownHosts())
	}
	if a.Selects(r.cfg.Host.ID(), r.cfg.Labels) {
		if err := r.pathsAllowed(a); err != nil { // said now, not only in this host's state
			return nil, api.Forbidden(fmt.Errorf("activation of %s: %w", a.Layer, err))
		}
	}
	if err := r.cfg.Catalog.MergeActivation(a); err != nil {
		return nil, fmt.Errorf("activation of %s: %w", a.Layer, err)
	}
	r.cfg.Announce.Notify()
	r.cfg.Reconcile.Notify()
	res := &api.ActivateResult{Time: a.Time, Targets: targets}
	res.Activation, _ = json.Marshal(a)
	r.cfg.Log.Info("activation published", "layer", a.Layer, "op", a.Op, "hosts", a.Hosts, "targets", len(res.Targets))
	return res, nil
}

// known are the hosts this one knows of: those heard over gossip (with
// their labels) and those connected whose first snapshot has not arrived
// yet.
func (r *Reconciler) known() map[peer.ID]gossip.HostView {
	known := r.cfg.Catalog.Hosts()
	for _, p := range r.cfg.Host.Network().Peers() {
		if _, ok := known[p]; !ok {
			known[p] = gossip.HostView{}
		}
	}
	return known
}

// knownHosts counts the hosts known, this one included.
func (r *Reconciler) knownHosts() int { return len(r.known()) + 1 }

// targets are the known hosts an activation selects (this one included).
func (r *Reconciler) targets(a gossip.Activation) []string {
	out := []string{}
	if a.Selects(r.cfg.Host.ID(), r.cfg.Labels) {
		out = append(out, r.cfg.Host.ID().String())
	}
	for p, h := range r.known() {
		if a.Selects(p, h.Labels) {
			out = append(out, p.String())
		}
	}
	return out
}

// ResolveLayer is the manifest CID a layer name stands for: the cluster
// catalogue's, else this host's own record.
func (r *Reconciler) ResolveLayer(ctx context.Context, name string) (string, error) {
	if mp, ok := r.cfg.Catalog.Lookup(name); ok {
		return mp.CID, nil
	}
	nm, err := chunk.ParseName(name)
	if err != nil {
		return "", api.BadRequest(err)
	}
	l, err := r.cfg.Store.GetLayer(ctx, nm)
	if err != nil {
		return "", fmt.Errorf("layer %s is not in the cluster catalogue or on this host: %w", name, chunk.ErrNotFound)
	}
	return l.CID, nil
}

// Activations is every known host's state for every layer it was asked
// about, with whether that host is still heard from.
func (r *Reconciler) Activations() []api.HostActivation {
	out := []api.HostActivation{}
	now := time.Now()
	add := func(p peer.ID, st gossip.HostState) {
		ha := api.HostActivation{Host: p.String(), Layer: st.Layer, CID: st.CID, At: st.At, State: st.State, Detail: st.Detail, Time: st.Time, Mode: st.Mode, Trace: st.Trace,
			Done: st.Done, Total: st.Total, Peers: st.Peers,
			Reach: api.ReachSelf, LastSeen: now}
		if r.cfg.Reach != nil {
			ha.Reach, ha.LastSeen = r.cfg.Reach(p, now)
		}
		out = append(out, ha)
	}
	for _, st := range r.States() {
		add(r.cfg.Host.ID(), st)
	}
	for p, h := range r.cfg.Catalog.Hosts() {
		for _, st := range h.States {
			add(p, st)
		}
	}
	return out
}
