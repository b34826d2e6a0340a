package activate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/expose"
	"github.com/p2pimg/p2pimg/node/gossip"
)

// refusedByPolicy reports (once per activation) and returns true when the
// layer's effective policy here forbids activating it.
func (r *Reconciler) refusedByPolicy(ctx context.Context, e *record, a gossip.Activation) bool {
	eff, c, ok := r.cfg.Policy.Effective(ctx, a.Layer)
	if !ok || (c == nil && eff.MayActivate) {
		return false
	}
	reason := "the layer policy does not allow activation on this host (activate=...)"
	if c != nil {
		reason = c.Error()
	}
	if e.State != api.StateFailed || e.Detail != "policy: "+reason || e.Time != a.Time {
		e.Time, e.CID = a.Time, a.CID
		r.report(e, api.StateFailed, "policy: "+reason)
	}
	return true
}

// bringUp fetches the pinned layer, exposes it and makes its maps. A
// layer exposed lazily returns its manifest as behind: its trace and
// background fetch start once it is reported active.
func (r *Reconciler) bringUp(ctx context.Context, e *record, a gossip.Activation) (behind *chunk.Manifest, err error) {
	if e.Mode == api.ModeFUSE && r.lazy(ctx, a) {
		m, err := r.lazyManifest(ctx, a)
		if err == nil {
			if err := r.pathsAllowed(a); err != nil { // again: its parents may have changed since
				return nil, err
			}
			if err := r.exposeVersion(ctx, e, m); err != nil {
				return nil, err
			}
			return m, r.mapAll(e, a)
		}
		r.cfg.Log.Info("lazy activation: fetching the whole layer first", "layer", a.Layer, "reason", err)
	}
	m, err := r.ensureLayer(ctx, a, func(ev api.Event) {
		if p := ev.Progress; p != nil {
			st := e.hostState()
			st.State, st.Detail = api.StateFetching, fmt.Sprintf("%d of %d bytes from %d peer(s)", p.Done, p.Total, p.Peers)
			st.Done, st.Total, st.Peers = p.Done, p.Total, p.Peers
			r.setState(st)
			r.cfg.Announce.Notify()
		}
	})
	if err != nil {
		return nil, err
	}
	if err := r.pathsAllowed(a); err != nil { // again, just before: the fetch took a while, and its parents may have changed
		return nil, err
	}
	if err := r.exposeVersion(ctx, e, m); err != nil {
		return nil, err
	}
	return nil, r.mapAll(e, a)
}

// mapAll makes a's maps into e's exposure.
func (r *Reconciler) mapAll(e *record, a gossip.Activation) error {
	maps, err := r.mapsFor(a)
	if err != nil {
		return err
	}
	return r.cfg.Exposer.MapAll(&e.Exposure, maps, func() error { return r.save(e) })
}

// exposeVersion exposes version e.CID (manifest m) at e.Path. When the
// exposure shows another version, it first looks again for local changes:
// writes made while the new version was fetched would be lost by the
// switch (the overlay's upper directory is dropped, and the new version's
// disk images do not have the old one's writes), so the switch is refused
// and the old version stays in use.
func (r *Reconciler) exposeVersion(ctx context.Context, e *record, m *chunk.Manifest) error {
	if e.Exposed && e.shown() != e.CID {
		if n, size := r.cfg.Exposer.Changes(&e.Exposure, e.Layer); n > 0 {
			e.Kept = true
			return errors.New(r.refusal(e, n, size, "version "+e.CID+" would not show them"))
		}
		if w := expose.Writers(&e.Exposure, 3); len(w) > 0 {
			e.Kept = true
			return errors.New(writersRefusal("activation", e, w))
		}
	}
	if err := r.cfg.Exposer.Expose(ctx, &e.Exposure, e.Layer, e.CID, m, r.cfg.Policy.Locked(ctx, e.Layer)); err != nil {
		return err
	}
	e.Shown = e.CID
	return nil
}

// lazy reports whether an activation goes live before its fetch ends: the
// daemon's default, the activation's own --lazy, or the layer policy's.
func (r *Reconciler) lazy(ctx context.Context, a gossip.Activation) bool {
	if r.cfg.Lazy || a.Lazy {
		return true
	}
	eff, c, ok := r.cfg.Policy.Effective(ctx, a.Layer)
	return ok && c == nil && eff.Lazy
}

// ensureLayer makes the activation's pinned layer complete here.
func (r *Reconciler) ensureLayer(ctx context.Context, a gossip.Activation, emit api.Emit) (*chunk.Manifest, error) {
	name, _ := chunk.ParseName(a.Layer)
	id, err := cid.Decode(a.CID)
	if err != nil {
		return nil, fmt.Errorf("activate %s: manifest id %q: %w", a.Layer, a.CID, err)
	}
	mp, ok := r.cfg.Catalog.Lookup(name.String())
	if !ok || mp.CID != a.CID {
		mp = gossip.Mapping{Name: name.String(), CID: a.CID}
	}
	if _, err := r.cfg.Fetcher.Fetch(ctx, name, mp, emit); err != nil {
		return nil, err
	}
	m, err := r.cfg.Store.GetManifest(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("activate %s: %w", a.Layer, err)
	}
	return chunk.Flat(ctx, r.cfg.Store, m)
}

// mirrorCheck has the policy undo drift in an active exposure, every
// mirrorEvery at most. It runs on the reconciler goroutine.
func (r *Reconciler) mirrorCheck(ctx context.Context, e *record) {
	if e.State != api.StateActive || !e.Exposed || time.Since(e.checked) < mirrorEvery {
		return
	}
	e.checked = time.Now()
	detail, restored, err := r.cfg.Policy.Restore(ctx, e.Layer, e.CID, &e.Exposure)
	if detail == "" {
		return
	}
	e.Detail = detail
	if err != nil {
		r.cfg.Log.Warn("policy: restore failed", "layer", e.Layer, "err", err)
		return
	}
	if err := r.save(e); err != nil {
		r.cfg.Log.Warn("activation record", "layer", e.Layer, "err", err)
	}
	e.Restored += restored
	r.setState(e.hostState())
}
