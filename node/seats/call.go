package seats

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/p2p"
)

// seatCall sends req to the keepers' leader: the last keeper that
// answered first, then every keeper, following leader hints, until one
// decides or ctx ends.
func (sv *Service) seatCall(ctx context.Context, req seatReq) (*seatResp, error) {
	if len(sv.keeperIDs()) == 0 {
		return nil, api.BadRequestf("this cluster has no keepers: licence seats need `keepers = [...]` in the cluster file")
	}
	var lastErr error
	backoff := 20 * time.Millisecond
	for {
		keepers := sv.keeperIDs()
		sv.mu.Lock()
		queue := append([]peer.ID{sv.hint}, keepers...)
		sv.mu.Unlock()
		tried := map[peer.ID]bool{"": true}
		for len(queue) > 0 {
			k := queue[0]
			queue = queue[1:]
			if tried[k] {
				continue
			}
			tried[k] = true
			resp, err := sv.askKeeper(ctx, k, req)
			if err == nil && len(resp.Change) > 0 {
				// A keeper tells of a newer set of keepers: ask those.
				if ok, _ := sv.adoptChange(resp.Change); ok {
					queue = append(queue, sv.keeperIDs()...)
				}
			}
			switch {
			case err != nil:
				lastErr = fmt.Errorf("keeper %s: %w", p2p.ShortID(k), err)
			case resp.NotLeader:
				lastErr = fmt.Errorf("keeper %s is not the leader and knows none (no keeper majority?)", p2p.ShortID(k))
				if id, err := peer.Decode(resp.Leader); err == nil && sv.isKeeper(id) {
					queue = append([]peer.ID{id}, queue...)
				}
			case resp.Err != "":
				lastErr = errors.New(resp.Err)
			default:
				sv.mu.Lock()
				sv.hint = k
				sv.mu.Unlock()
				return resp, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no keeper majority decided (%d keepers; last: %v): %w", len(sv.keeperIDs()), lastErr, ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

func (sv *Service) askKeeper(ctx context.Context, k peer.ID, req seatReq) (*seatResp, error) {
	if k == sv.cfg.Host.ID() {
		kp := sv.keeper.Load()
		if kp == nil {
			return nil, errors.New("this host's keeper is not running")
		}
		r := kp.serve(k, req)
		return &r, nil
	}
	sctx, cancel := context.WithTimeout(ctx, deadlineOf(req.Op))
	defer cancel()
	s, err := sv.cfg.Host.NewStream(sctx, k, seatProto)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	if dl, ok := sctx.Deadline(); ok {
		s.SetDeadline(dl)
	}
	defer context.AfterFunc(sctx, func() { s.Reset() })()
	if err := writeMsg(s, req); err != nil {
		s.Reset()
		return nil, err
	}
	var resp seatResp
	if err := readMsg(bufio.NewReader(s), maxSeatResp, &resp); err != nil {
		s.Reset()
		return nil, err
	}
	return &resp, nil
}
