package fetch

import "time"

// Requests in flight on a stream are sized to what the stream carries: a
// bandwidth-delay product where the delay is the time worth keeping queued
// at the peer. A stream that gets a sixteenth of a seed's 50 Mbit/s holds
// a chunk or two there (so the seed's first copies are asked for only
// shortly before they are sent, and reach their fetcher, who passes them
// on, soon after); a stream between two hosts on a fast link holds
// maxDepth batches of maxBatch chunks, as a fixed depth did.
const (
	maxBatch     = 16 // chunks per request at most
	maxDepth     = 8  // requests in flight per stream at most
	minDepth     = 2  // the peer always has the next request when it ends one
	startBatch   = 4  // before the stream's rate is known
	batchTime    = 50 * time.Millisecond
	inflightTime = 250 * time.Millisecond
)

// pace measures a stream's rate from the time its peer takes to serve
// each batch while the pipeline is not empty.
type pace struct {
	rate  float64   // bytes per second, averaged; 0 before the first batch
	since time.Time // when the batch at the head of the pipeline began to be served
}

// size is how many chunks (of avg bytes on average) to ask for per request,
// and how many requests to keep in flight.
func (pc *pace) size(avg float64) (batch, depth int) {
	if pc.rate == 0 || avg <= 0 {
		return startBatch, minDepth
	}
	batch = min(maxBatch, max(1, int(pc.rate*batchTime.Seconds()/avg)))
	depth = min(maxDepth, max(minDepth, int(pc.rate*inflightTime.Seconds()/(float64(batch)*avg))+1))
	return batch, depth
}

// sent notes a request sent; the clock starts if the pipeline was empty.
func (pc *pace) sent(wasEmpty bool, now time.Time) {
	if wasEmpty {
		pc.since = now
	}
}

// read notes a batch of n bytes read at now; more says whether requests
// remain in flight (the next batch's service starts now).
func (pc *pace) read(n int, now time.Time, more bool) {
	if d := now.Sub(pc.since).Seconds(); d > 0 && !pc.since.IsZero() {
		r := float64(n) / d
		if pc.rate == 0 {
			pc.rate = r
		} else {
			pc.rate = 0.7*pc.rate + 0.3*r
		}
	}
	pc.since = time.Time{}
	if more {
		pc.since = now
	}
}
