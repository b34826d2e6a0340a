package fetch

import (
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/node/xchg"
)

// streams keeps idle chunk-exchange streams to peers for on-demand asks:
// a read then does not open a stream (and negotiate its protocol) per
// chunk. A stream is kept at most keptFor, well inside the server's idle
// timeout, and at most keepPerPeer of them per peer.
type streams struct {
	mu   sync.Mutex
	idle map[peer.ID][]keptStream
}

type keptStream struct {
	c     *xchg.Conn
	since time.Time
}

const (
	keepPerPeer = 8
	keptFor     = 30 * time.Second
)

// get takes an idle stream to p, if one is kept.
func (s *streams) get(p peer.ID) (*xchg.Conn, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for list := s.idle[p]; len(list) > 0; list = s.idle[p] {
		k := list[len(list)-1]
		s.idle[p] = list[:len(list)-1]
		if time.Since(k.since) < keptFor {
			return k.c, true
		}
		k.c.Close()
	}
	return nil, false
}

// put keeps c, a stream to p with no request outstanding, for reuse.
func (s *streams) put(p peer.ID, c *xchg.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.idle == nil {
		s.idle = map[peer.ID][]keptStream{}
	}
	if len(s.idle[p]) >= keepPerPeer {
		c.Close()
		return
	}
	s.idle[p] = append(s.idle[p], keptStream{c, time.Now()})
}
