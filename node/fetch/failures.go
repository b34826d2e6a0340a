package fetch

import (
	"context"
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/xchg"
)

// ErrStalled is a fetch that no connected peer moved forward for the
// stall timeout.
var ErrStalled = errors.New("stalled")

// Cause is why a layer fetch failed, the label of p2pimg_fetch_failures_total.
type Cause string

// The causes, most specific first (see CauseOf).
const (
	CauseCanceled Cause = "canceled"  // the caller gave up (interrupt, deactivation, deadline)
	CauseNoSpace  Cause = "no_space"  // the disk could not take what the fetch would write
	CauseStalled  Cause = "stalled"   // no peer sent a chunk for the stall timeout
	CauseVerify   Cause = "verify"    // data did not match its id
	CauseNotFound Cause = "not_found" // no connected peer has the layer
	CausePeer     Cause = "peer"      // a peer broke the protocol or lost what it claimed
	CauseOther    Cause = "other"     // the store, a bad record: see the daemon log
)

var causes = []Cause{CauseCanceled, CauseNoSpace, CauseStalled, CauseVerify, CauseNotFound, CausePeer, CauseOther}

// CauseOf classifies a fetch error by the sentinels it wraps.
func CauseOf(err error) Cause {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return CauseCanceled
	case errors.Is(err, chunk.ErrNoSpace):
		return CauseNoSpace
	case errors.Is(err, ErrStalled):
		return CauseStalled
	case errors.Is(err, chunk.ErrHashMismatch):
		return CauseVerify
	case errors.Is(err, chunk.ErrNotFound):
		return CauseNotFound
	case errors.Is(err, xchg.ErrProtocol), errors.Is(err, xchg.ErrMissing):
		return CausePeer
	}
	return CauseOther
}

func newFailures() *prometheus.CounterVec {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "p2pimg_fetch_failures_total",
		Help: "Layer fetches that failed, by cause: canceled, no_space, stalled, verify, not_found, peer, other.",
	}, []string{"cause"})
	for _, c := range causes { // every cause reads 0 before its first failure
		v.WithLabelValues(string(c))
	}
	return v
}

// failed counts a failed fetch by its cause; nil counts nothing.
func (fr *Fetcher) failed(err error) {
	if err != nil {
		fr.failures.WithLabelValues(string(CauseOf(err))).Inc()
	}
}
