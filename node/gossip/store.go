package gossip

import (
	"context"
	"fmt"
	"time"
)

// StoreSummary is what a host tells the others of its chunk store and
// the disk under it, inside its host record: a few figures, so that
// every host's web view shows every host's store use.
type StoreSummary struct {
	// At is when the figures were measured (unix nanoseconds at the host;
	// never after the record's version).
	At             int64 `json:"at"`
	Layers         int64 `json:"layers"`
	Chunks         int64 `json:"chunks"`
	LogicalBytes   int64 `json:"logical"`
	StoredBytes    int64 `json:"stored"`
	AllocatedBytes int64 `json:"allocated"`
	DeadBytes      int64 `json:"dead"`
	ViewBytes      int64 `json:"view,omitempty"`
	DeltaBytes     int64 `json:"delta,omitempty"`
	UpperBytes     int64 `json:"upper,omitempty"`
	DiskFree       int64 `json:"disk_free"`
	DiskTotal      int64 `json:"disk_total"`
}

// Bounds of a store summary's figures: far above any real store (an
// exbibyte, 2^50 chunks, 2^30 layers), far below what overflows a sum.
const (
	maxStoreBytes  = 1 << 60
	maxStoreChunks = 1 << 50
	maxStoreLayers = 1 << 30
)

// Announcing the store: its figures are looked at again at most every
// storeIntervals announce intervals (30s at the default 10s) and
// announced again only when one moved by more than a threshold (see
// changed), or when the last announcement is older than storeRestate (so
// figures heard are never older than that while their host is up).
const (
	storeIntervals = 3
	storeRestate   = 15 * time.Minute
)

// StoreFunc measures this host's store now (it may reuse figures a few
// seconds old; At says when they were measured). An error leaves the
// last announced figures in place.
type StoreFunc func(ctx context.Context) (StoreSummary, error)

// figure is one of a summary's figures with its bound.
type figure struct {
	name string
	v    int64
	max  int64
}

// figures names the summary's figures with their bounds, for check and
// changed.
func (s *StoreSummary) figures() []figure {
	return []figure{
		{"layers", s.Layers, maxStoreLayers},
		{"chunks", s.Chunks, maxStoreChunks},
		{"logical", s.LogicalBytes, maxStoreBytes},
		{"stored", s.StoredBytes, maxStoreBytes},
		{"allocated", s.AllocatedBytes, maxStoreBytes},
		{"dead", s.DeadBytes, maxStoreBytes},
		{"view", s.ViewBytes, maxStoreBytes},
		{"delta", s.DeltaBytes, maxStoreBytes},
		{"upper", s.UpperBytes, maxStoreBytes},
		{"disk_free", s.DiskFree, maxStoreBytes},
		{"disk_total", s.DiskTotal, maxStoreBytes},
	}
}

// check refuses figures no store has: negative or absurd ones, more disk
// free than there is, a measurement after the record stating it.
func (s *StoreSummary) check(version int64) error {
	if s.At <= 0 || s.At > version {
		return fmt.Errorf("store.at %d: want a time (unix ns) no later than the record's version %d", s.At, version)
	}
	for _, f := range s.figures() {
		if f.v < 0 || f.v > f.max {
			return fmt.Errorf("store.%s %d: want 0 to %d", f.name, f.v, f.max)
		}
	}
	if s.DiskFree > s.DiskTotal {
		return fmt.Errorf("store.disk_free %d: more than store.disk_total %d", s.DiskFree, s.DiskTotal)
	}
	return nil
}

// Thresholds of a change worth announcing: 1% of the figure, at least
// minByteChange (a small store's few bytes do not count) and never more
// than maxByteChange (a large store's 64 MiB do); counts move by 1%, at
// least one.
const (
	minByteChange = 1 << 20
	maxByteChange = 64 << 20
)

// changed says whether now differs from was by more than a threshold in
// any figure.
func (now *StoreSummary) changed(was *StoreSummary) bool {
	a, b := now.figures(), was.figures()
	for i := range a {
		d := a[i].v - b[i].v
		if d < 0 {
			d = -d
		}
		limit := b[i].v / 100
		switch {
		case a[i].name == "disk_free":
			// Other programs move it all the time: 1% of the disk.
			limit = max(was.DiskTotal/100, minByteChange)
		case a[i].max == maxStoreBytes:
			limit = min(max(limit, minByteChange), maxByteChange)
		}
		if d > limit || d > 0 && limit == 0 {
			return true
		}
	}
	return false
}

// storeSummary is the summary this host's record should carry now: the
// last announced one unless storeIntervals intervals passed and the store's figures
// moved (or storeRestate passed); nil while the store was never read.
func (s *Service) storeSummary(ctx context.Context, now time.Time) *StoreSummary {
	if s.cfg.StoreUse == nil {
		return nil
	}
	s.mu.Lock()
	last, looked := s.store.last, s.store.looked
	s.mu.Unlock()
	if last != nil && now.Sub(looked) < storeIntervals*s.cfg.Interval {
		return last
	}
	cur, err := s.cfg.StoreUse(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.cfg.Log.Warn("store figures not announced", "err", err)
		}
		return last
	}
	if err := cur.check(now.Add(maxFutureSkew).UnixNano()); err != nil {
		s.cfg.Log.Warn("store figures not announced", "err", err)
		return last
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.store.looked = now
	if last == nil || cur.changed(last) || time.Unix(0, cur.At).Sub(time.Unix(0, last.At)) >= storeRestate {
		s.store.last = &cur
	}
	return s.store.last
}
