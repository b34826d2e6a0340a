package seats

import (
	"context"
	"time"

	"github.com/hashicorp/raft"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/chunk/strictcbor"
)

// The seat table is never gossiped: whoever wants it (`license ls`) asks a
// keeper, and a host's own grants come from the keepers' answers. Gossip
// carries a note of a few hundred bytes, whatever the number of seats:
// the keepers' log index after seats were freed (waiters claim again) and
// the newest keeper change (who the keepers are). A host that missed a
// note loses nothing it needs: waiters also retry every second, and every
// keeper's answer carries the newest keeper change.
type seatNote struct {
	Index  uint64 `cbor:"1,keyasint"`
	Change []byte `cbor:"2,keyasint,omitempty"`
}

// heardNote is a note as the validator passes it on: its index (0 from a
// host that is no keeper) and the keeper change it told of, decoded and
// checked once, when newer than the one this host knew (nil otherwise).
type heardNote struct {
	index  uint64
	change *KeeperChange
}

const maxNote = 8 << 10

// noteDec skips keys a newer version added to the note (pubsub's signature
// covers the note's bytes whole, and relays pass them on as they came), so
// a keeper that was upgraded first is not refused by the others; the
// keeper change inside stays strict (changeDec: its signature covers only
// the fields this version knows).
var noteDec = strictcbor.Tolerant(16, 16)

func (sv *Service) wakeWaiters() {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	close(sv.changed)
	sv.changed = make(chan struct{})
}

// validateNote accepts notes from keepers only, each newer than the last;
// a note that tells of a keeper change carries the operator's signed
// change, checked here.
func (sv *Service) validateNote(_ context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	origin := msg.GetFrom()
	var n seatNote
	if len(msg.Data) > maxNote {
		sv.cfg.Log.Warn("seat note rejected: too large", "origin", origin.String(), "bytes", len(msg.Data))
		return pubsub.ValidationReject
	}
	if err := noteDec.Unmarshal(msg.Data, &n); err != nil {
		sv.cfg.Log.Warn("seat note rejected", "origin", origin.String(), "via", from.String(), "err", err)
		return pubsub.ValidationReject
	}
	h := heardNote{index: n.Index}
	if len(n.Change) > 0 {
		c, err := unmarshalChange(n.Change)
		if err == nil && c.Newer(sv.currentChange()) {
			if err = CheckKeeperChange(c, sv.cfg.Cluster); err == nil {
				h.change = c
			}
		}
		if err != nil {
			sv.cfg.Log.Warn("seat note rejected: bad keeper change", "origin", origin.String(), "err", err)
			return pubsub.ValidationReject
		}
	}
	newer := h.change != nil
	if origin == sv.cfg.Host.ID() {
		msg.ValidatorData = h // this host's own note (it may have just removed itself)
		return pubsub.ValidationAccept
	}
	if !sv.isKeeper(origin) && !newer {
		// Not (or no longer) a keeper as this host knows them: its index
		// means nothing, and it told of no change this host lacks.
		return pubsub.ValidationIgnore
	}
	sv.mu.Lock()
	old := n.Index <= sv.noted
	sv.mu.Unlock()
	if old && !newer {
		return pubsub.ValidationIgnore
	}
	if !sv.isKeeper(origin) {
		h.index = 0
	}
	msg.ValidatorData = h
	return pubsub.ValidationAccept
}

func (sv *Service) currentChange() *KeeperChange {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	return sv.change
}

// receive takes in the keepers' notes: a newer keeper change, and freed
// seats, which wake the claims waiting here.
func (sv *Service) receive(ctx context.Context, sub *pubsub.Subscription) {
	for {
		msg, err := sub.Next(ctx)
		if err != nil {
			return
		}
		n, ok := msg.ValidatorData.(heardNote)
		if !ok {
			continue
		}
		if n.change != nil {
			sv.adopt(n.change)
		}
		sv.mu.Lock()
		newer := n.index > sv.noted
		if newer {
			sv.noted = n.index
		}
		sv.mu.Unlock()
		if newer {
			sv.wakeWaiters()
		}
	}
}

// announce publishes a note when this host's keeper freed seats (or the
// keepers changed) and, from the leader, every interval; a keeper also
// wakes the claims waiting on its own host.
func (sv *Service) announce(ctx context.Context, topic *pubsub.Topic) {
	t := time.NewTicker(sv.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sv.kick.C():
			// Let a burst of commands land: one note for all of them.
			select {
			case <-ctx.Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
			sv.wakeWaiters()
		case <-t.C:
		}
		// A keeper change this host's keeper applied is announced even
		// when the keeper has stopped since (it removed itself).
		k := sv.keeper.Load()
		changed := sv.announceChange.Swap(false)
		if !changed && (k == nil || k.raft.State() != raft.Leader) {
			continue
		}
		var index uint64
		if k != nil {
			index = k.raft.AppliedIndex()
		}
		b, _ := strictcbor.Encoder().Marshal(seatNote{Index: index, Change: sv.changeBytes()})
		if err := topic.Publish(ctx, b); err != nil && ctx.Err() == nil {
			sv.cfg.Log.Warn("seat note", "err", err)
		}
	}
}
