package activate

import (
	"context"
	"time"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/gossip"
)

// claimTimeout bounds one seat claim of the reconciler.
const claimTimeout = 5 * time.Second

// seatConsumer is the consumer id under which an activated layer holds its
// seat on a host.
func seatConsumer(layer string) string { return "layer:" + layer }

// layerProduct is the licensed product the activated layer needs, from its
// signed mapping ("" when none).
func (r *Reconciler) layerProduct(ctx context.Context, a gossip.Activation) string {
	if mp, ok := r.cfg.Catalog.Lookup(a.Layer); ok && mp.CID == a.CID {
		return mp.Product
	}
	if name, err := chunk.ParseName(a.Layer); err == nil {
		if l, err := r.cfg.Store.GetLayer(ctx, name); err == nil && l.CID == a.CID {
			return l.Product
		}
	}
	return ""
}

// claimSeat claims the seat an activation needs. While none is free the
// host reports waiting-for-seat (and the reconciler tries again each
// second); other failures report failed.
func (r *Reconciler) claimSeat(ctx context.Context, e *record, a gossip.Activation, product string) bool {
	cctx, cancel := context.WithTimeout(ctx, claimTimeout)
	defer cancel()
	_, err := r.cfg.Seats.Claim(cctx, api.ClaimRequest{Product: product, Consumer: seatConsumer(a.Layer)})
	if err == nil {
		e.Product = product
		return true
	}
	st := gossip.HostState{Layer: e.Layer, CID: a.CID, At: a.At, State: api.StateWaitingSeat, Time: a.Time, Mode: r.cfg.Exposer.Mode(), Detail: err.Error()}
	if api.CodeOf(err) != api.CodeConflict {
		if ctx.Err() != nil {
			return false
		}
		st.State = api.StateFailed
		e.Failed = time.Now()
	}
	if cur, ok := r.stateOf(e.Layer); !ok || cur != st {
		r.setState(st)
		r.cfg.Announce.Notify()
	}
	return false
}

// releaseSeat gives back the seat a deactivated layer held.
func (r *Reconciler) releaseSeat(ctx context.Context, e *record) {
	if e.Product == "" {
		return
	}
	if _, err := r.cfg.Seats.Release(ctx, api.ReleaseRequest{Product: e.Product, Consumer: seatConsumer(e.Layer)}); err != nil {
		r.cfg.Log.Warn("seat release of a deactivated layer failed; it lapses at its lease end", "layer", e.Layer, "err", err)
	}
	e.Product = ""
}
