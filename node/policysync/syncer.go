package policysync

import (
	"context"
	"time"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/fetch"
	"github.com/p2pimg/p2pimg/policy"
)

// inWindow reports whether background sync may run now.
func inWindow(ws []policy.Window, now time.Time) bool {
	return policy.Allows(ws, now.UTC().Hour()*60+now.UTC().Minute())
}

// Run fetches every layer the effective policy says this host holds, and
// records conflicts, until ctx ends: within a couple of seconds of any
// change to the catalogue (its digest is cheap to read), to the layers in
// the store (their generation is cheaper still) or to the host policy,
// and every policyRetry while the last pass left a held layer waiting (a
// sync window, a failed fetch). A pass reads the whole catalogue, so an
// idle host with a large one skips it: with the catalogue, the store and
// the policies unchanged and nothing waiting, a pass would find what the
// last one found. Cancellation is not an error.
func (sv *Service) Run(ctx context.Context) error {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	var st passState
	kicked := true
	for {
		sv.maybePass(ctx, &st, kicked, time.Now())
		kicked = false
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-sv.kick.C():
			kicked = true
		}
	}
}

// passState is what the last pass saw.
type passState struct {
	done    bool     // a pass ran
	seen    [32]byte // the catalogue's digest
	gen     uint64   // the store's layer generation
	last    time.Time
	waiting bool // a held layer was left for later
}

// maybePass runs a pass when one could find something new, and reports
// whether it ran.
func (sv *Service) maybePass(ctx context.Context, st *passState, kicked bool, now time.Time) bool {
	d, g := sv.cfg.Catalog.Digest(), sv.cfg.Store.LayerGen()
	retry := st.waiting && now.Sub(st.last) >= policyRetry
	if st.done && !kicked && d == st.seen && g == st.gen && !retry {
		return false
	}
	st.waiting = sv.syncPolicies(ctx)
	st.done, st.seen, st.gen, st.last = true, d, g, now
	return true
}

// syncPolicies is one pass; it reports whether a layer this host holds
// was left waiting (outside its sync window, or its fetch failed or is
// to be retried), so that a later pass must look again.
func (sv *Service) syncPolicies(ctx context.Context) (waiting bool) {
	me := sv.cfg.ID
	all := sv.cfg.Catalog.All()
	f := sv.facts(ctx)[me]
	conflicts := map[string]*policy.Conflict{}
	held := heldSizes(f, all)
	for _, mp := range all {
		e, c := resolveHeld(me, f, mp, held)
		if c != nil {
			conflicts[mp.Name] = c
			continue
		}
		if !e.Hold || f.held[mp.CID] {
			continue
		}
		if !inWindow(e.Windows, time.Now()) || ctx.Err() != nil {
			waiting = true
			continue
		}
		name, _ := chunk.ParseName(mp.Name)
		if l, err := sv.cfg.Store.GetLayer(ctx, name); err == nil && l.CID == mp.CID && l.State == chunk.Complete {
			continue
		}
		key := mp.Name + "@" + mp.CID
		sv.mu.Lock()
		last, failedBefore := sv.failed[key]
		sv.mu.Unlock()
		if failedBefore && time.Since(last) < policyRetry {
			waiting = true
			continue
		}
		sv.cfg.Log.Info("policy: fetching a layer this host holds", "layer", mp.Name)
		_, err := sv.cfg.Fetcher.Fetch(fetch.WithCap(ctx, e.Bandwidth), name, mp, func(api.Event) {})
		sv.mu.Lock()
		if err != nil && ctx.Err() == nil {
			waiting = true
			sv.failed[key] = time.Now()
			sv.cfg.Log.Warn("policy: fetch of a held layer failed; trying again later", "layer", mp.Name, "retry_in", policyRetry, "err", err)
		} else {
			delete(sv.failed, key)
		}
		sv.mu.Unlock()
	}
	sv.mu.Lock()
	changed := len(conflicts) != len(sv.conflicts)
	for k, c := range conflicts {
		if o := sv.conflicts[k]; o == nil || *o != *c {
			changed = true
			sv.cfg.Log.Warn("policy conflict: this host does not sync the layer", "layer", k, "layer_rule", c.LayerRule, "host_rule", c.HostRule)
		}
	}
	sv.conflicts = conflicts
	sv.mu.Unlock()
	if changed {
		sv.cfg.Announce.Notify()
	}
	return waiting
}
