package seats

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/node/api"
)

// Keepers lists the keepers as the Raft configuration has them (asked of
// the keepers), beside the cluster file's keepers.
func (sv *Service) Keepers(ctx context.Context) (*api.KeeperList, error) {
	if len(sv.keeperIDs()) == 0 {
		return nil, api.BadRequestf("this cluster has no keepers: licence seats need `keepers = [...]` in the cluster file")
	}
	kctx, cancel := context.WithTimeout(ctx, decideTimeout)
	defer cancel()
	resp, err := sv.seatCall(kctx, seatReq{Op: opKeepers})
	if err != nil {
		return nil, fmt.Errorf("keepers: %w", err)
	}
	if resp.Keepers == nil {
		return nil, errors.New("keepers: the keeper sent no configuration")
	}
	return sv.keeperList(resp.Keepers), nil
}

func (sv *Service) keeperList(rc *raftConfig) *api.KeeperList {
	out := &api.KeeperList{Index: rc.Index, Leader: rc.Leader}
	file := map[string]bool{}
	for _, id := range sv.cfg.Cluster.KeeperIDs() {
		out.File = append(out.File, id.String())
		file[id.String()] = true
	}
	connected := func(s string) bool {
		id, err := peer.Decode(s)
		return err == nil && (id == sv.cfg.Host.ID() || sv.cfg.Host.Network().Connectedness(id) == network.Connected)
	}
	inRaft := map[string]bool{}
	for _, s := range rc.Servers {
		inRaft[s.ID] = true
		k := api.Keeper{ID: s.ID, Raft: "nonvoter", InFile: file[s.ID], Leader: s.ID == rc.Leader, Connected: connected(s.ID)}
		if s.Voter {
			k.Raft = "voter"
		}
		out.Keepers = append(out.Keepers, k)
	}
	for _, s := range out.File {
		if !inRaft[s] {
			out.Keepers = append(out.Keepers, api.Keeper{ID: s, InFile: true, Connected: connected(s)})
		}
	}
	out.Differs = len(inRaft) != len(file)
	for s := range inRaft {
		out.Differs = out.Differs || !file[s]
	}
	if c := sv.currentChange(); c != nil {
		out.Change, _ = json.Marshal(c)
	}
	return out
}

// ChangeKeepers checks an operator's signed keeper change (JSON) here, so
// a bad one is refused with its reason before any keeper sees it, and has
// the keepers' leader apply it.
func (sv *Service) ChangeKeepers(ctx context.Context, signed []byte) (*api.KeeperList, error) {
	var c KeeperChange
	if err := json.Unmarshal(signed, &c); err != nil {
		return nil, api.BadRequestf("keeper change: not a signed keeper change: %v", err)
	}
	if err := CheckKeeperChange(&c, sv.cfg.Cluster); err != nil {
		return nil, api.BadRequest(err)
	}
	cctx, cancel := context.WithTimeout(ctx, changeDeadline+5*time.Second)
	defer cancel()
	resp, err := sv.seatCall(cctx, seatReq{Op: opKeeperChange, Change: marshalChange(&c)})
	if err != nil {
		return nil, fmt.Errorf("%s keeper %s: %w", c.Op, c.Host, err)
	}
	if resp.Result.Code != "" {
		return nil, api.Conflict(fmt.Errorf("%s keeper %s: %s", c.Op, c.Host, resp.Result.Err))
	}
	if resp.Keepers == nil {
		return nil, fmt.Errorf("%s keeper %s: the leader sent no configuration", c.Op, c.Host)
	}
	sv.adopt(&c)
	return sv.keeperList(resp.Keepers), nil
}

// NewKeeperChange builds the change that adds (or removes) host to (from)
// the keepers listed in l, for the operator to sign.
func NewKeeperChange(cluster, op, host string, l api.KeeperList) (KeeperChange, error) {
	id, err := peer.Decode(host)
	if err != nil {
		return KeeperChange{}, api.BadRequestf("%q is not a peer id (see `p2pimg status`)", host)
	}
	var now []string
	for _, k := range l.Keepers {
		if k.Raft != "" {
			now = append(now, k.ID)
		}
	}
	in := slices.Contains(now, id.String())
	switch {
	case op == KeeperAdd && in:
		return KeeperChange{}, api.Conflictf("%s is a keeper already", id)
	case op == KeeperRemove && !in:
		return KeeperChange{}, api.Conflictf("%s is not a keeper (the keepers: %v)", id, now)
	case op == KeeperRemove && len(now) == 1:
		return KeeperChange{}, api.Conflictf("%s is the last keeper: add another first", id)
	}
	next := slices.DeleteFunc(now, func(s string) bool { return s == id.String() })
	if op == KeeperAdd {
		next = append(next, id.String())
	}
	slices.Sort(next)
	return KeeperChange{Cluster: cluster, Op: op, Host: id.String(), Keepers: next, Prev: l.Index, Time: time.Now().UnixNano()}, nil
}
