package node

import (
	"sync"
	"time"
)

// rateMeter turns counters sampled now and then (a fetch's bytes done as a
// host reports them, a peer's byte counters) into bytes per second: the
// rate between the last two values that differ, zero once a counter has
// not moved for staleRate.
type rateMeter struct {
	mu sync.Mutex
	m  map[string]rateSample
}

type rateSample struct {
	v    int64
	at   time.Time
	rate int64
}

// staleRate is how long a counter may stand still before its rate is 0;
// longer than the gossip announce interval, so a remote fetch reported
// every few seconds keeps its rate in between.
const staleRate = 15 * time.Second

func newRateMeter() *rateMeter { return &rateMeter{m: map[string]rateSample{}} }

// observe records counter key's value v at now and returns its rate.
func (r *rateMeter) observe(key string, v int64, now time.Time) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.m[key]
	switch {
	case !ok || v < s.v: // new, or started over
		r.m[key] = rateSample{v: v, at: now}
		return 0
	case v == s.v:
		if now.Sub(s.at) > staleRate {
			return 0
		}
		return s.rate
	}
	dt := now.Sub(s.at).Seconds()
	if dt <= 0 {
		return s.rate
	}
	r.m[key] = rateSample{v: v, at: now, rate: int64(float64(v-s.v) / dt)}
	return r.m[key].rate
}

// forget drops the counters not in keep (fetches that ended, peers gone).
func (r *rateMeter) forget(prefix string, keep map[string]bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := range r.m {
		if len(k) >= len(prefix) && k[:len(prefix)] == prefix && !keep[k] {
			delete(r.m, k)
		}
	}
}
