package seats

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/license"
	"github.com/p2pimg/p2pimg/node/p2p"
)

// maxChangeAge bounds how long a signed keeper change may wait before it
// reaches the leader (either way, for clocks that differ).
const maxChangeAge = 10 * time.Minute

// handle answers one seat request from another host. A keeper serves it; a
// host that is no keeper (or no longer one) says so, with the newest keeper
// change it knows; any host takes the leader's request to join the keepers.
func (sv *Service) handle(s network.Stream) {
	defer s.Close()
	s.SetDeadline(time.Now().Add(seatDeadline))
	from := s.Conn().RemotePeer()
	var req seatReq
	if err := readMsg(bufio.NewReader(s), maxSeatMsg, &req); err != nil {
		sv.cfg.Log.Warn("seat request refused", "peer", from.String(), "err", err)
		s.Reset()
		return
	}
	s.SetDeadline(time.Now().Add(deadlineOf(req.Op)))
	var resp seatResp
	switch k := sv.keeper.Load(); {
	case req.Op == opKeeperJoin:
		resp = sv.join(from, req)
	case k != nil:
		resp = k.serve(from, req)
	default:
		resp = seatResp{NotLeader: true, Change: sv.changeBytes()}
	}
	writeMsg(s, resp)
}

// deadlineOf bounds one request of op.
func deadlineOf(op license.Op) time.Duration {
	if op == opKeeperChange || op == opKeeperJoin {
		return changeDeadline
	}
	return seatDeadline
}

func (sv *Service) changeBytes() []byte {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	return marshalChange(sv.change)
}

func refusedResp(format string, a ...any) seatResp {
	return seatResp{Result: license.Result{Code: license.CodeRefused, Err: fmt.Sprintf(format, a...)}}
}

// join starts this host's keeper at the leader's request, before the
// leader adds it to the configuration: the new configuration's majority
// counts this host, so it must be listening first. The keeper starts with
// no state and gets the log or a snapshot from the leader.
func (sv *Service) join(from peer.ID, req seatReq) seatResp {
	self := sv.cfg.Host.ID()
	c, err := unmarshalChange(req.Change)
	if err == nil {
		err = CheckKeeperChange(c, sv.cfg.Cluster)
	}
	switch {
	case err != nil:
		return refusedResp("join the keepers: %v", err)
	case c.Op != KeeperAdd || c.Host != self.String():
		return refusedResp("join the keepers: the change does not add this host (%s)", p2p.ShortID(self))
	case from == self || !slices.Contains(c.Keepers, from.String()):
		return refusedResp("join the keepers: %s, which asked, is not one of them", p2p.ShortID(from))
	}
	sv.mu.Lock()
	if sv.joining == nil || c.Newer(sv.joining) {
		sv.joining = c
	}
	sv.mu.Unlock()
	sv.setChanged.Notify()
	t := time.NewTimer(seatDeadline)
	defer t.Stop()
	select {
	case <-sv.keeperRunning():
	case <-t.C:
		return seatResp{Err: fmt.Sprintf("the keeper of %s did not start within %v (see its log)", p2p.ShortID(self), seatDeadline)}
	}
	sv.cfg.Log.Info("joining the keepers", "asked by", from.String(), "configuration", c.Prev)
	return seatResp{}
}

// configuration is the Raft configuration as this keeper sees it.
func (k *keeper) configuration() seatResp {
	f := k.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return seatResp{Err: fmt.Sprintf("keeper %s: configuration: %v", p2p.ShortID(k.sv.cfg.Host.ID()), err)}
	}
	_, leader := k.raft.LeaderWithID()
	rc := &raftConfig{Index: k.fsm.conf(), Leader: string(leader)}
	for _, s := range f.Configuration().Servers {
		rc.Servers = append(rc.Servers, raftServer{ID: string(s.ID), Voter: s.Suffrage == raft.Voter})
	}
	return seatResp{Keepers: rc, Change: k.sv.changeBytes()}
}

// changeKeepers applies an operator's keeper change on the leader: it
// checks the change against the current configuration, has an added host
// start its keeper, and commits the new configuration (AddVoter or
// RemoveServer, both only on the configuration the change was made for).
// A change already in force is answered as done: a retry whose first
// answer was lost must not fail.
func (k *keeper) changeKeepers(req seatReq) seatResp {
	if k.raft.State() != raft.Leader {
		return k.notLeader()
	}
	c, err := unmarshalChange(req.Change)
	if err == nil {
		err = CheckKeeperChange(c, k.sv.cfg.Cluster)
	}
	if err != nil {
		return refusedResp("%v", err)
	}
	if age := time.Duration(k.now() - c.Time); age > maxChangeAge || age < -maxChangeAge {
		return refusedResp("keeper change signed %v away from the leader's clock (at most %v): sign it again", age.Round(time.Second), maxChangeAge)
	}
	f := k.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return seatResp{Err: fmt.Sprintf("configuration: %v", err)}
	}
	var now []string
	for _, s := range f.Configuration().Servers {
		now = append(now, string(s.ID))
	}
	slices.Sort(now)
	if slices.Equal(now, c.Keepers) {
		k.sv.adopt(c)
		return k.configuration()
	}
	if conf := k.fsm.conf(); conf != c.Prev {
		return refusedResp("the keepers changed since this request was made (configuration %d, the request is for %d): look again with `p2pimg license keepers ls`", conf, c.Prev)
	}
	want := slices.DeleteFunc(slices.Clone(now), func(s string) bool { return s == c.Host })
	if c.Op == KeeperAdd {
		want = append(want, c.Host)
		slices.Sort(want)
	}
	if !slices.Equal(want, c.Keepers) {
		return refusedResp("the request states the keepers %v, but %s %s to the current %v gives %v", c.Keepers, c.Op, c.Host, now, want)
	}
	if resp := k.applyChange(c, req.Change); resp != nil {
		return *resp
	}
	k.sv.adopt(c)
	k.sv.announceChange.Store(true)
	k.sv.kick.Notify()
	return k.configuration()
}

// applyChange has an added host start its keeper and commits the change
// to the configuration; it returns the answer when it failed.
func (k *keeper) applyChange(c *KeeperChange, signed []byte) *seatResp {
	id := raft.ServerID(c.Host)
	var fut raft.IndexFuture
	if c.Op == KeeperAdd {
		host, _ := peer.Decode(c.Host)
		ctx, cancel := context.WithTimeout(context.Background(), seatDeadline)
		resp, err := k.sv.askKeeper(ctx, host, seatReq{Op: opKeeperJoin, Change: signed})
		cancel()
		switch {
		case err != nil:
			r := refusedResp("%s did not start its keeper: %v (is its daemon running and reachable?)", p2p.ShortID(host), err)
			return &r
		case resp.Result.Code != "" || resp.Err != "":
			r := refusedResp("%s did not start its keeper: %s%s", p2p.ShortID(host), resp.Result.Err, resp.Err)
			return &r
		}
		fut = k.raft.AddVoter(id, raft.ServerAddress(c.Host), c.Prev, changeDeadline/2)
	} else {
		fut = k.raft.RemoveServer(id, c.Prev, changeDeadline/2)
	}
	if err := fut.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			r := k.notLeader()
			return &r
		}
		r := refusedResp("%s %s: %v", c.Op, c.Host, err)
		return &r
	}
	// The future ends at commit; the FSM records the index when it applies
	// the entry, a moment later. Answer with the new index so the next
	// change, made from this answer, is for the configuration in force.
	for end := time.Now().Add(changeDeadline / 2); k.fsm.conf() < fut.Index() && time.Now().Before(end); {
		time.Sleep(5 * time.Millisecond)
	}
	k.sv.cfg.Log.Info("keepers changed by the leader", "op", c.Op, "host", c.Host, "operator", c.Signer)
	return nil
}
