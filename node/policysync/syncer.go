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
// change to the catalogue (its digest is cheap to read) or the host
// policy, and every policyRetry for sync windows and retries. A pass
// reads the whole catalogue, so an idle host with a large one skips it.
// Cancellation is not an error.
func (sv *Service) Run(ctx context.Context) error {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	var seen [32]byte
	var last time.Time
	kicked := true
	for {
		if d := sv.cfg.Catalog.Digest(); kicked || d != seen || time.Since(last) >= policyRetry {
			sv.syncPolicies(ctx)
			seen, last = d, time.Now()
		}
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

func (sv *Service) syncPolicies(ctx context.Context) {
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
		if !e.Hold || f.held[mp.CID] || !inWindow(e.Windows, time.Now()) || ctx.Err() != nil {
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
			continue
		}
		sv.cfg.Log.Info("policy: fetching a layer this host holds", "layer", mp.Name)
		_, err := sv.cfg.Fetcher.Fetch(fetch.WithCap(ctx, e.Bandwidth), name, mp, func(api.Event) {})
		sv.mu.Lock()
		if err != nil && ctx.Err() == nil {
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
}
