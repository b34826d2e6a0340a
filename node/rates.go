package node

import (
	"strings"
	"sync"
	"time"
)

// rateMeter turns counters sampled now and then (a fetch's bytes done as a
// host reports them, a peer's byte counters) into bytes per second: the
// rate between the last two values that differ, zero once a counter has
// not moved for its hold time.
type rateMeter struct {
	mu sync.Mutex
	m  map[string]rateSample
}

type rateSample struct {
	v    int64
	at   time.Time
	rate int64
}

// Hold times: how long a counter may stand still before its rate is 0. A
// fetch's progress comes from the host's gossiped state, every few
// seconds at most, so its rate holds in between; a peer's byte counters
// are this host's own and current.
const (
	holdReported = 15 * time.Second
	holdLocal    = 2 * time.Second
)

func newRateMeter() *rateMeter { return &rateMeter{m: map[string]rateSample{}} }

// observe records counter key's value v at now and returns its rate.
func (r *rateMeter) observe(key string, v int64, now time.Time, hold time.Duration) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.m[key]
	switch {
	case !ok || v < s.v: // new, or started over
		r.m[key] = rateSample{v: v, at: now}
		return 0
	case v == s.v:
		if now.Sub(s.at) > hold {
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
		if strings.HasPrefix(k, prefix) && !keep[k] {
			delete(r.m, k)
		}
	}
}
