package p2p

import (
	"log/slog"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
)

// Conduct thresholds.
const (
	// ViolationLimit protocol violations within ViolationWindow block a
	// peer for ViolationBlock.
	ViolationLimit  = 3
	ViolationWindow = 10 * time.Minute
	ViolationBlock  = 10 * time.Minute
	// FailureLimit streams in a row that fail stop new ones to the peer,
	// for a backoff that doubles up to maxBackoff.
	FailureLimit = 3
	baseBackoff  = time.Second
	maxBackoff   = 10 * time.Second
)

// Conduct keeps count of how each peer behaves on the chunk protocol, for
// the server and the fetcher alike: protocol violations (a broken frame, a
// garbage item, an item longer than the chunk it answers), streams that
// keep failing, and layers it claims to hold but does not serve. A peer
// past ViolationLimit is blocked by the gater and disconnected. Safe for
// concurrent use.
type Conduct struct {
	h   host.Host
	g   *Gater
	log *slog.Logger
	now func() time.Time

	mu    sync.Mutex
	peers map[peer.ID]*conduct

	violations *prometheus.CounterVec
	blocked    prometheus.Counter
	unserved   prometheus.Counter
}

type conduct struct {
	violations []time.Time // within the window
	failures   int         // streams in a row that failed
	retryAt    time.Time
	misses     int // layers claimed and not served (halved by each one served)
}

// NewConduct registers the conduct metrics.
func NewConduct(h host.Host, g *Gater, log *slog.Logger, reg prometheus.Registerer) *Conduct {
	c := &Conduct{h: h, g: g, log: log, now: time.Now, peers: map[peer.ID]*conduct{},
		violations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "p2pimg_xchg_violations_total", Help: "Chunk protocol violations by peers, by side (serve: as a client of ours; fetch: as a server).",
		}, []string{"side"}),
		blocked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "p2pimg_xchg_peers_blocked_total", Help: "Peers blocked for repeated chunk protocol violations.",
		}),
	}
	c.unserved = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "p2pimg_xchg_claims_unserved_total", Help: "Layers a peer said it held and then did not serve.",
	})
	reg.MustRegister(c.violations, c.blocked, c.unserved)
	return c
}

func (c *Conduct) peer(p peer.ID) *conduct {
	pc := c.peers[p]
	if pc == nil {
		pc = &conduct{}
		c.peers[p] = pc
	}
	return pc
}

// Violation counts a protocol violation by p (side "serve" or "fetch");
// the caller has closed the stream. It reports whether p is now blocked.
func (c *Conduct) Violation(p peer.ID, side string, err error) bool {
	c.violations.WithLabelValues(side).Inc()
	now := c.now()
	c.mu.Lock()
	pc := c.peer(p)
	keep := pc.violations[:0]
	for _, t := range pc.violations {
		if now.Sub(t) < ViolationWindow {
			keep = append(keep, t)
		}
	}
	pc.violations = append(keep, now)
	block := len(pc.violations) >= ViolationLimit
	if block {
		pc.violations = nil
	}
	c.mu.Unlock()
	c.log.Debug("chunk protocol violation", "peer", p.String(), "side", side, "err", err)
	if block {
		c.log.Warn("peer blocked: repeated chunk protocol violations", "peer", p.String(), "for", ViolationBlock.String(), "last", err)
		c.blocked.Inc()
		c.g.Block(p, ViolationBlock)
		c.h.Network().ClosePeer(p)
	}
	return block
}

// StreamFailed notes a stream to p that failed; past FailureLimit in a row
// no new stream is opened to p until a backoff passes.
func (c *Conduct) StreamFailed(p peer.ID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	pc := c.peer(p)
	pc.failures++
	if pc.failures >= FailureLimit {
		d := baseBackoff << min(pc.failures-FailureLimit, 6)
		pc.retryAt = c.now().Add(min(d, maxBackoff))
	}
}

// StreamWorked notes a stream to p that answered (its have-bitmap, or
// chunks).
func (c *Conduct) StreamWorked(p peer.ID) {
	c.mu.Lock()
	if pc := c.peers[p]; pc != nil {
		pc.failures, pc.retryAt = 0, time.Time{}
	}
	c.mu.Unlock()
}

// MayOpen reports whether a new stream to p may be opened now.
func (c *Conduct) MayOpen(p peer.ID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	pc := c.peers[p]
	return pc == nil || pc.failures < FailureLimit || !c.now().Before(pc.retryAt)
}

// Missed notes that p claimed a layer (in gossip) and did not serve it.
func (c *Conduct) Missed(p peer.ID) {
	c.unserved.Inc()
	c.mu.Lock()
	c.peer(p).misses++
	c.mu.Unlock()
}

// Served notes that p served what it claimed: its misses are halved.
func (c *Conduct) Served(p peer.ID) {
	c.mu.Lock()
	if pc := c.peers[p]; pc != nil {
		pc.misses /= 2
	}
	c.mu.Unlock()
}

// Misses is p's score of claims not served (0: none); peers with more are
// asked later, and more briefly.
func (c *Conduct) Misses(p peer.ID) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if pc := c.peers[p]; pc != nil {
		return pc.misses
	}
	return 0
}

// Violations is the violation counter of side ("serve" or "fetch").
func (c *Conduct) Violations(side string) prometheus.Counter {
	return c.violations.WithLabelValues(side)
}
