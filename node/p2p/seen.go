package p2p

import (
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/node/api"
)

// maxSeen bounds each record below: an outsider cycling peer ids cannot
// grow this host's memory.
const maxSeen = 64

// Seen records what `p2pimg doctor` reports of connections: hosts the
// gater refused for not being members, and configured peers that could
// not be dialled. Safe for concurrent use.
type Seen struct {
	now func() time.Time

	mu      sync.Mutex
	refused map[peer.ID]*api.RefusedPeer
	dials   map[peer.ID]*api.DialFailure
}

// NewSeen returns an empty record.
func NewSeen(now func() time.Time) *Seen {
	return &Seen{now: now, refused: map[peer.ID]*api.RefusedPeer{}, dials: map[peer.ID]*api.DialFailure{}}
}

// refuse notes that p (from addr) was refused: not a member.
func (s *Seen) refuse(p peer.ID, addr string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.refused[p]
	if !ok {
		if len(s.refused) >= maxSeen {
			delete(s.refused, oldest(s.refused, func(r *api.RefusedPeer) time.Time { return r.Last }))
		}
		r = &api.RefusedPeer{ID: p.String()}
		s.refused[p] = r
	}
	r.Addr, r.Last = addr, s.now().UTC()
	r.Count++
}

// Dialed notes the outcome of dialling the configured peer ai.
func (s *Seen) Dialed(ai peer.AddrInfo, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		delete(s.dials, ai.ID)
		return
	}
	d, ok := s.dials[ai.ID]
	if !ok {
		if len(s.dials) >= maxSeen {
			delete(s.dials, oldest(s.dials, func(d *api.DialFailure) time.Time { return d.Since }))
		}
		d = &api.DialFailure{ID: ai.ID.String(), Since: s.now().UTC()}
		s.dials[ai.ID] = d
	}
	d.Addrs = d.Addrs[:0]
	for _, a := range ai.Addrs {
		d.Addrs = append(d.Addrs, a.String())
	}
	d.Error = err.Error()
}

// Refused lists the hosts refused, the latest first.
func (s *Seen) Refused() []api.RefusedPeer {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]api.RefusedPeer, 0, len(s.refused))
	for _, r := range s.refused {
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b api.RefusedPeer) int { return b.Last.Compare(a.Last) })
	return out
}

// DialFailures lists the configured peers not reachable now, by id.
func (s *Seen) DialFailures() []api.DialFailure {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]api.DialFailure, 0, len(s.dials))
	for _, d := range s.dials {
		c := *d
		c.Addrs = slices.Clone(d.Addrs)
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b api.DialFailure) int { return strings.Compare(a.ID, b.ID) })
	return out
}

func oldest[T any](m map[peer.ID]T, at func(T) time.Time) peer.ID {
	var id peer.ID
	var t time.Time
	for k, v := range m {
		if id == "" || at(v).Before(t) {
			id, t = k, at(v)
		}
	}
	return id
}
