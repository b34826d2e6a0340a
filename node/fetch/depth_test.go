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
				// One batch of 1 MiB served in the time the rate says.
				start := time.Unix(0, 0)
				pc.sent(true, start)
				pc.read(1<<20, start.Add(time.Duration(float64(1<<20)/tc.rate*float64(time.Second))), false)
			}
			batch, depth := pc.size(avg)
			if batch != tc.batch || depth != tc.depth {
				t.Fatalf("rate %.0f B/s: batch %d, depth %d; want %d, %d", tc.rate, batch, depth, tc.batch, tc.depth)
			}
		})
	}
}
