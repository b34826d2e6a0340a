// Package activate is where a layer becomes visible at a path: the
// reconciler that brings this host in line with the newest activation
// that selects it (check policy, claim a seat if the layer is licensed,
// fetch, expose, map paths; or undo it all), its per-layer state machine
// and durable record, and the publishing of activations. It decides what
// is exposed where; it never mounts or copies itself (package expose
// does) and never grants a seat (package seats does).
package activate

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/expose"
	"github.com/p2pimg/p2pimg/node/gossip"
)

// record is what this host did for a layer, kept durably (under
// "act/LAYER") so that it can be undone after a restart.
type record struct {
	Layer  string    `json:"layer"`
	CID    string    `json:"cid"`
	At     string    `json:"at,omitempty"`
	State  api.State `json:"state"`
	Detail string    `json:"detail,omitempty"`
	Time   int64     `json:"time"` // of the activation it answers
	expose.Exposure
	Failed time.Time `json:"failed,omitempty"`
	// Kept: a change that would have lost local writes was refused, so the
	// exposure stays in use (and is mounted again after a restart) while
	// the record says failed.
	Kept bool `json:"kept,omitempty"`
	// Shown is the manifest the exposure shows ("" in records written
	// before it was kept: CID). CID moves to an activation's version as
	// soon as work on it starts; Shown only once that version is exposed.
	Shown string `json:"shown,omitempty"`
	// Product: the layer needed a seat of it, held for consumer "layer:NAME".
	Product string `json:"product,omitempty"`
	// Restored counts the drifted paths mirror mode put back.
	Restored int `json:"restored,omitempty"`
	// Trace is "MANIFEST/CHUNK": the access trace recorded here after
	// exposing that version lazily.
	Trace string `json:"trace,omitempty"`

	checked time.Time // last mirror check
	noted   time.Time // last look for local changes
}

// shown is the manifest e's exposure shows.
func (e *record) shown() string {
	if e.Shown != "" {
		return e.Shown
	}
	return e.CID
}

// hostState is the record as this host reports it.
func (e *record) hostState() gossip.HostState {
	return gossip.HostState{Layer: e.Layer, CID: e.CID, At: e.At, State: e.State, Detail: e.Detail, Time: e.Time, Mode: e.Mode, Trace: e.traceOf()}
}

// retryAfter is how long a failed activation waits before it is tried again.
const retryAfter = 5 * time.Second

func recordKey(layer string) string { return "act/" + layer }

func (r *Reconciler) loadRecords() (map[string]*record, error) {
	recs, err := r.cfg.Store.Records("act/")
	if err != nil {
		return nil, fmt.Errorf("activation records: %w", err)
	}
	out := map[string]*record{}
	for k, v := range recs {
		var e record
		if err := json.Unmarshal(v, &e); err != nil {
			return nil, fmt.Errorf("activation record %s: %w", k, err)
		}
		if e.Exposed && e.Mode == api.ModeOverlay && e.Lower == "" {
			e.Lower = e.shown() // a record from before Lower was kept
		}
		out[e.Layer] = &e
	}
	return out, nil
}

func (r *Reconciler) save(e *record) error {
	b, _ := json.Marshal(e)
	return r.cfg.Store.PutRecord(recordKey(e.Layer), b)
}

// Exposure is how layer is exposed on this host now, from its durable
// record: the manifest id it shows and what was done; ok is false when it
// is not exposed.
func (r *Reconciler) Exposure(ctx context.Context, layer string) (cidStr string, x expose.Exposure, ok bool, err error) {
	recs, err := r.cfg.Store.Records(recordKey(layer))
	if err != nil {
		return "", x, false, fmt.Errorf("activation record of %s: %w", layer, err)
	}
	b, found := recs[recordKey(layer)]
	var e record
	if !found || json.Unmarshal(b, &e) != nil || !e.Exposed {
		return "", x, false, nil
	}
	return e.shown(), e.Exposure, true, nil // the version in use, not one being brought up
}

// Changed is what was written into layer's exposure here, for a commit;
// api.Conflict when the layer is not exposed on this host.
func (r *Reconciler) Changed(ctx context.Context, layer string) (expose.Changed, error) {
	cidStr, x, ok, err := r.Exposure(ctx, layer)
	if err != nil {
		return expose.Changed{}, err
	}
	if !ok {
		return expose.Changed{}, api.Conflict(fmt.Errorf("%s is not exposed on this host (see `p2pimg status`)", layer))
	}
	return r.cfg.Exposer.Changed(&x, layer, cidStr)
}

// Held lists the layer versions this host exposes or is bringing up or
// taking down, from their durable records (safe from any goroutine).
func (r *Reconciler) Held(ctx context.Context) ([]expose.Held, error) {
	recs, err := r.loadRecords()
	if err != nil {
		return nil, err
	}
	var out []expose.Held
	for _, e := range recs {
		if e.CID != "" && (e.Exposed || (e.State != api.StateInactive && e.State != api.StateFailed)) {
			out = append(out, expose.Held{Layer: e.Layer, CID: e.CID, Trace: e.traceOf(), Exposure: e.Exposure})
		}
		if e.Exposed && e.shown() != e.CID { // the version in use while another is brought up or refused
			out = append(out, expose.Held{Layer: e.Layer, CID: e.shown(), Exposure: e.Exposure})
		}
	}
	return out, nil
}

// PruneViews removes the overlay-mode view checkouts that no layer held
// here uses; it returns how many and their disk.
func (r *Reconciler) PruneViews(ctx context.Context) (int, int64, error) {
	return r.pruneViews(ctx, "")
}

// pruneViews is PruneViews as if layer except were no longer held.
func (r *Reconciler) pruneViews(ctx context.Context, except string) (int, int64, error) {
	held, err := r.Held(ctx)
	if err != nil {
		return 0, 0, err
	}
	keep := map[string]bool{}
	for _, h := range held {
		if h.Layer != except {
			keep[h.CID] = true
		}
	}
	return r.cfg.Exposer.PruneViews(keep)
}

// Disk is what the exposures keep in the data dir beside the store.
func (r *Reconciler) Disk() expose.Disk { return r.cfg.Exposer.Disk() }
