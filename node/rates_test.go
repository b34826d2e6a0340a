package node

import (
	"testing"
	"time"
)

func TestRateMeter(t *testing.T) {
	t0 := time.Unix(1000, 0)
	steps := []struct {
		v    int64
		at   time.Duration
		want int64
	}{
		{0, 0, 0},                     // first sample: no rate yet
		{1000, time.Second, 1000},     // 1000 bytes in 1 s
		{1000, 2 * time.Second, 1000}, // no report since: the rate holds
		{4000, 3 * time.Second, 1500}, // 3000 bytes over the 2 s since the last change
		{4000, 3*time.Second + holdReported + time.Second, 0}, // stalled
		{100, 30 * time.Second, 0},                            // started over
		{600, 31 * time.Second, 500},
	}
	r := newRateMeter()
	for i, s := range steps {
		if got := r.observe("k", s.v, t0.Add(s.at), holdReported); got != s.want {
			t.Fatalf("step %d: rate %d, want %d", i, got, s.want)
		}
	}
	r.forget("k", map[string]bool{})
	if len(r.m) != 0 {
		t.Fatalf("forget left %v", r.m)
	}
}
