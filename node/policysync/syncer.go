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

// Run fetches every layer the effective policy says this host holds, on
// every change and every few seconds, and records conflicts, until ctx
// ends. Cancellation is not an error.
func (sv *Service) Run(ctx context.Context) error {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		sv.syncPolicies(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-sv.kick.C():
		}
	}
}

func (sv *Service) syncPolicies(ctx context.Context) {
	me := sv.cfg.ID
	all := sv.cfg.Catalog.All()
	f := sv.facts(ctx)[me]
	conflicts := map[string]*policy.Conflict{}
	for _, mp := range all {
		e, c := resolve(me, f, mp, all)
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
