package fetch

import (
	"testing"
	"time"
)

func TestPaceSizesInFlightToRate(t *testing.T) {
	t.Parallel()
	const avg = 64 << 10
	for _, tc := range []struct {
		name         string
		rate         float64 // bytes/s the stream carried
		batch, depth int
	}{
		{"unknown yet", 0, startBatch, minDepth},
		{"a sixteenth of 50 Mbit/s", 6.25e6 / 16, 1, minDepth},
		{"400 Mbit/s shared by 4", 50e6 / 4, 9, 6},
		{"loopback, 600 MB/s", 600e6, maxBatch, maxDepth},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var pc pace
			if tc.rate > 0 {
				// Batches of 64 KiB, each served in the time the rate says,
				// until a sample is taken.
				at := time.Unix(0, 0)
				pc.sent(true, at)
				for busy := time.Duration(0); busy < sampleTime; {
					d := time.Duration(float64(64<<10) / tc.rate * float64(time.Second))
					at, busy = at.Add(d), busy+d
					pc.read(64<<10, at, true)
				}
			}
			batch, depth := pc.size(avg)
			if batch != tc.batch || depth != tc.depth {
				t.Fatalf("rate %.0f B/s: batch %d, depth %d; want %d, %d", tc.rate, batch, depth, tc.batch, tc.depth)
			}
		})
	}
}

// Answers that were buffered when the reader came to them arrive at once;
// the rate is what the stream carried over the time it was served, not
// what one batch's arrival suggests.
func TestPaceIgnoresBufferedBursts(t *testing.T) {
	t.Parallel()
	const avg, rate = 64 << 10, 200e3 // a sixteenth of a 50 Mbit/s link, about
	var pc pace
	at := time.Unix(0, 0)
	pc.sent(true, at)
	for range 20 {
		// A second at the stream's rate, then its batches in one burst.
		at = at.Add(time.Duration(4 * avg / rate * float64(time.Second)))
		for range 4 {
			pc.read(avg, at, true)
			at = at.Add(time.Millisecond)
		}
	}
	if batch, depth := pc.size(avg); batch*depth > 4 {
		t.Fatalf("a stream carrying %.0f B/s keeps %d x %d chunks of %d in flight", float64(rate), depth, batch, avg)
	}
}
