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

// pace measures a stream's rate: the bytes it read over the time its
// peer was serving it (requests in flight), in samples of at least
// sampleTime. Timing each batch alone overstated the rate by far when
// several answers were already buffered on arrival (they come back at
// once), and the inflated rate asked for up to 128 chunks on a stream
// that carried a sixteenth of a link: seconds of queue at that peer,
// which the endgame then asked other peers for again.
type pace struct {
	rate  float64       // bytes per second, averaged; 0 before the first sample
	since time.Time     // when the batch at the head of the pipeline began to be served
	bytes int           // read in the current sample
	busy  time.Duration // serving time in the current sample
}

// sampleTime is the least serving time one rate sample spans.
const sampleTime = 100 * time.Millisecond

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
	if !pc.since.IsZero() {
		pc.bytes += n
		pc.busy += now.Sub(pc.since)
		if pc.busy >= sampleTime {
			r := float64(pc.bytes) / pc.busy.Seconds()
			if pc.rate == 0 {
				pc.rate = r
			} else {
				pc.rate = 0.5*pc.rate + 0.5*r
			}
			pc.bytes, pc.busy = 0, 0
		}
	}
	pc.since = time.Time{}
	if more {
		pc.since = now
	}
}
