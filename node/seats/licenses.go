package seats

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/hashicorp/raft"

	"github.com/p2pimg/p2pimg/license"
	"github.com/p2pimg/p2pimg/node/api"
)

// InstallLicense checks a licence here (with the reason when it is bad)
// and has the keepers install it.
func (sv *Service) InstallLicense(ctx context.Context, text string) (*api.LicenseInfo, error) {
	l, err := license.Parse([]byte(text))
	if err != nil {
		return nil, api.BadRequest(err)
	}
	if err := l.Verify(sv.cfg.Cluster.SeatRules().Trusted, time.Now()); err != nil {
		return nil, api.BadRequest(err)
	}
	ictx, cancel := context.WithTimeout(ctx, decideTimeout)
	defer cancel()
	resp, err := sv.seatCall(ictx, seatReq{Op: license.OpInstall, License: l.Marshal()})
	if err != nil {
		return nil, fmt.Errorf("install licence %s: %w", l.ID(), err)
	}
	if resp.Result.Code != "" {
		return nil, api.BadRequest(errors.New(resp.Result.Err))
	}
	info := licenseInfo(l, nil)
	return &info, nil
}

func licenseInfo(l *license.License, seats []license.Seat) api.LicenseInfo {
	info := api.LicenseInfo{ID: l.ID(), Product: l.Product, Seats: l.Seats, Share: l.Share, KeyID: l.KeyID(),
		Issued: time.Unix(l.Issued, 0).UTC()}
	if l.Expires != 0 {
		info.Expires = time.Unix(l.Expires, 0).UTC()
	}
	for _, s := range seats {
		if s.Product == l.Product {
			info.Used++
		}
	}
	info.Free = max(0, l.Seats-info.Used)
	return info
}

// Licenses is the seat table as the keepers' leader holds it (a
// follower's own copy may lag by the Raft commit timeout): the leader's
// own, else asked of it (the table is never gossiped). A keeper that finds
// no leader shows its own copy, with no leader named.
func (sv *Service) Licenses(ctx context.Context) (*api.LicenseList, error) {
	if len(sv.keeperIDs()) == 0 {
		return &api.LicenseList{}, nil
	}
	k := sv.keeper.Load()
	if k != nil && k.raft.State() == raft.Leader {
		return sv.licenseList(k.fsm.table(), sv.seatLeader()), nil
	}
	lctx, cancel := context.WithTimeout(ctx, decideTimeout)
	defer cancel()
	resp, err := sv.seatCall(lctx, seatReq{Op: opTable})
	switch {
	case err != nil && k != nil:
		return sv.licenseList(k.fsm.table(), ""), nil
	case err != nil:
		return nil, fmt.Errorf("seat table: %w", err)
	case resp.Result.Code != "":
		return nil, errors.New(resp.Result.Err)
	}
	t, err := license.UnmarshalTable(resp.Table)
	if err != nil {
		return nil, err
	}
	return sv.licenseList(t, sv.seatLeader()), nil
}

func (sv *Service) licenseList(t *license.Table, leader string) *api.LicenseList {
	out := &api.LicenseList{Index: t.Index, Leader: leader}
	for _, l := range t.Licenses {
		out.Licenses = append(out.Licenses, licenseInfo(l, t.Seats))
	}
	sort.Slice(out.Licenses, func(i, j int) bool { return out.Licenses[i].Product < out.Licenses[j].Product })
	for _, s := range t.Seats {
		out.Holders = append(out.Holders, api.Grant{Product: s.Product, Seat: s.N, Token: s.Token, Host: s.Host,
			Consumers: s.Consumers, ValidUntil: time.Unix(0, s.Expires).UTC()})
	}
	sv.mu.Lock()
	for _, g := range sv.grants {
		out.Held = append(out.Held, sv.grantAPI(g))
	}
	sv.mu.Unlock()
	sort.Slice(out.Held, func(i, j int) bool { return out.Held[i].Token < out.Held[j].Token })
	return out
}

// seatLeader is the keepers' leader: from Raft on a keeper, else the
// keeper that last decided a request of this host.
func (sv *Service) seatLeader() string {
	if k := sv.keeper.Load(); k != nil {
		_, id := k.raft.LeaderWithID()
		return string(id)
	}
	sv.mu.Lock()
	defer sv.mu.Unlock()
	return sv.hint.String()
}
