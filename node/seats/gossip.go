package seats

import (
	"context"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pimg/p2pimg/license"
)

// adoptTable keeps t if it is newer than the view.
func (sv *Service) adoptTable(t *license.Table) {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	if sv.view != nil && t.Index <= sv.view.Index {
		return
	}
	sv.view = t
	close(sv.changed)
	sv.changed = make(chan struct{})
}

// validateSeats accepts seat tables gossiped by keepers only, each newer
// than the last.
func (sv *Service) validateSeats(_ context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	origin := msg.GetFrom()
	if !sv.cfg.Cluster.IsKeeper(origin) {
		sv.cfg.Log.Warn("seat table from a host that is not a keeper rejected", "origin", origin.String(), "via", from.String())
		return pubsub.ValidationReject
	}
	t, err := license.UnmarshalTable(msg.Data)
	if err != nil {
		sv.cfg.Log.Warn("seat gossip rejected", "origin", origin.String(), "err", err)
		return pubsub.ValidationReject
	}
	sv.mu.Lock()
	old := sv.view != nil && t.Index <= sv.view.Index
	sv.mu.Unlock()
	if old && origin != sv.cfg.Host.ID() {
		return pubsub.ValidationIgnore
	}
	msg.ValidatorData = t
	return pubsub.ValidationAccept
}

// receive takes in the tables the keepers gossip.
func (sv *Service) receive(ctx context.Context, sub *pubsub.Subscription) {
	for {
		msg, err := sub.Next(ctx)
		if err != nil {
			return
		}
		if t, ok := msg.ValidatorData.(*license.Table); ok {
			sv.adoptTable(t)
		}
	}
}

// seatGossip publishes the keeper's table on every change and every
// announce interval.
func (sv *Service) seatGossip(ctx context.Context, topic *pubsub.Topic) {
	k := sv.keeper.Load()
	if k == nil {
		<-ctx.Done()
		return
	}
	t := time.NewTicker(sv.cfg.Interval)
	defer t.Stop()
	var last uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-sv.kick.C():
			// Let a burst of commands land: one table for all of them.
			select {
			case <-ctx.Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		case <-t.C:
			last = 0
		}
		tab := k.fsm.table()
		sv.adoptTable(tab)
		if tab.Index == last {
			continue
		}
		last = tab.Index
		if err := topic.Publish(ctx, license.MarshalTable(tab)); err != nil && ctx.Err() == nil {
			sv.cfg.Log.Warn("seat gossip", "err", err)
		}
	}
}
