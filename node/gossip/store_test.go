package gossip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/p2pimg/p2pimg/node/cluster"
)

// goodStore is a plausible store summary measured at at.
func goodStore(at int64) StoreSummary {
	return StoreSummary{At: at, Layers: 3, Chunks: 1200, LogicalBytes: 5 << 30, StoredBytes: 2 << 30, AllocatedBytes: 2<<30 + 1<<20,
		DeadBytes: 1 << 20, ViewBytes: 1 << 30, DiskFree: 100 << 30, DiskTotal: 500 << 30}
}

// A host record's store figures are checked on receipt: a figure no store
// has is refused with an error naming it.
func TestHostRecordStoreChecked(t *testing.T) {
	t.Parallel()
	k, id := testKey(t)
	c := &cluster.Config{Name: "t", Members: []string{id.String()}}
	if err := c.Check(); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	v := now.UnixNano()
	for _, tc := range []struct {
		name string
		edit func(*StoreSummary)
		data string // instead of the edited summary
		want string
	}{
		{"ok", func(*StoreSummary) {}, "", ""},
		{"negative stored", func(s *StoreSummary) { s.StoredBytes = -1 }, "", "store.stored -1"},
		{"absurd chunks", func(s *StoreSummary) { s.Chunks = 1 << 62 }, "", "store.chunks"},
		{"absurd disk", func(s *StoreSummary) { s.DiskTotal = 1 << 62 }, "", "store.disk_total"},
		{"more free than disk", func(s *StoreSummary) { s.DiskFree = s.DiskTotal + 1 }, "", "store.disk_free"},
		{"measured after stated", func(s *StoreSummary) { s.At = v + 1 }, "", "store.at"},
		{"no time", func(s *StoreSummary) { s.At = 0 }, "", "store.at"},
		{"figure of a newer version", nil, `{"name":"a","store":{"at":1,"iops":1}}`, ""}, // skipped
		{"figure twice", nil, `{"name":"a","store":{"at":1,"stored":1,"stored":2}}`, "twice"},
		{"figure not a number", nil, `{"name":"a","store":{"at":1,"stored":"1"}}`, "store.stored"},
		{"overflowing figure", nil, `{"name":"a","store":{"at":1,"stored":1e30}}`, "store.stored"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := tc.data
			if data == "" {
				s := goodStore(v - int64(time.Second))
				tc.edit(&s)
				data = fmt.Sprintf(`{"name":"a","store":{"at":%d,"layers":%d,"chunks":%d,"logical":%d,"stored":%d,"allocated":%d,"dead":%d,"disk_free":%d,"disk_total":%d}}`,
					s.At, s.Layers, s.Chunks, s.LogicalBytes, s.StoredBytes, s.AllocatedBytes, s.DeadBytes, s.DiskFree, s.DiskTotal)
			}
			_, err := decodeBatch(batchBytes(t, stated(t, k, KindHost, "", v, data)), c, now)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}

// Only a change beyond the threshold is worth announcing again.
func TestStoreChangeThreshold(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		edit func(*StoreSummary)
		want bool
	}{
		{"nothing", func(*StoreSummary) {}, false},
		{"only the time", func(s *StoreSummary) { s.At += int64(time.Hour) }, false},
		{"stored by 0.5%", func(s *StoreSummary) { s.StoredBytes += 10 << 20 }, false},
		{"stored by 64 MiB + 1", func(s *StoreSummary) { s.StoredBytes += 64<<20 + 1 }, true},
		{"dead from 1 MiB by 1 MiB", func(s *StoreSummary) { s.DeadBytes = 2 << 20 }, false},
		{"dead from 1 MiB to 3 MiB", func(s *StoreSummary) { s.DeadBytes = 3 << 20 }, true},
		{"a layer more", func(s *StoreSummary) { s.Layers++ }, true},
		{"12 chunks more (1%)", func(s *StoreSummary) { s.Chunks += 12 }, false},
		{"13 chunks more", func(s *StoreSummary) { s.Chunks += 13 }, true},
		{"disk free by 4 GiB of 500", func(s *StoreSummary) { s.DiskFree -= 4 << 30 }, false},
		{"disk free by 6 GiB of 500", func(s *StoreSummary) { s.DiskFree -= 6 << 30 }, true},
		{"delta appears", func(s *StoreSummary) { s.DeltaBytes = 2 << 20 }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			was := goodStore(1)
			now := was
			tc.edit(&now)
			if got := now.changed(&was); got != tc.want {
				t.Fatalf("changed = %v, want %v", got, tc.want)
			}
		})
	}
	empty := StoreSummary{At: 1}
	if first := (StoreSummary{At: 2, Chunks: 1}); !first.changed(&empty) {
		t.Fatal("the first chunk of an empty store is no change")
	}
}

// The announcer looks at the store at most every storeIntervals
// intervals, keeps the figures it announced while they move little,
// restates them after storeRestate, and keeps them when the store
// cannot be read.
func TestStoreSummaryPacing(t *testing.T) {
	t.Parallel()
	var cur StoreSummary
	var fail error
	looks := 0
	s := &Service{cfg: Config{Interval: 10 * time.Second, Log: slog.New(slog.DiscardHandler),
		StoreUse: func(context.Context) (StoreSummary, error) { looks++; return cur, fail }}}
	ctx := context.Background()
	t0 := time.Now()
	at := func(d time.Duration) int64 { return t0.Add(d).UnixNano() }
	cur = goodStore(at(0))
	if got := s.storeSummary(ctx, t0); got == nil || *got != cur || looks != 1 {
		t.Fatalf("first: %+v after %d looks", got, looks)
	}
	cur = goodStore(at(5 * time.Second))
	cur.Layers++
	if got := s.storeSummary(ctx, t0.Add(5*time.Second)); got.Layers != 3 || looks != 1 {
		t.Fatalf("within 30s the store was looked at again (%d looks) or changed: %+v", looks, got)
	}
	if got := s.storeSummary(ctx, t0.Add(30*time.Second)); got.Layers != 4 || looks != 2 {
		t.Fatalf("after 30s: %+v after %d looks", got, looks)
	}
	cur.At, cur.DeadBytes = at(60*time.Second), cur.DeadBytes+1
	if got := s.storeSummary(ctx, t0.Add(60*time.Second)); got.At != at(5*time.Second) || got.DeadBytes != 1<<20 || looks != 3 {
		t.Fatalf("a small change was announced: %+v after %d looks", got, looks)
	}
	cur.At = at(16 * time.Minute)
	if got := s.storeSummary(ctx, t0.Add(16*time.Minute)); got.At != cur.At || got.DeadBytes != cur.DeadBytes {
		t.Fatalf("not restated after 15 minutes: %+v", got)
	}
	fail = errors.New("store closed")
	if got := s.storeSummary(ctx, t0.Add(20*time.Minute)); got == nil || got.At != cur.At {
		t.Fatalf("an unreadable store lost the last figures: %+v", got)
	}
	fail, cur.DiskFree = nil, cur.DiskTotal+1
	if got := s.storeSummary(ctx, t0.Add(30*time.Minute)); got == nil || got.DiskFree > got.DiskTotal {
		t.Fatalf("absurd own figures announced: %+v", got)
	}
}

// FuzzStoreSummary: whatever a host record's store says, what is
// accepted is within bounds, and comparing it never panics.
func FuzzStoreSummary(f *testing.F) {
	f.Add([]byte(`{"at":1,"layers":3,"chunks":1200,"logical":5368709120,"stored":2147483648,"allocated":2148532224,"dead":1048576,"disk_free":1,"disk_total":2}`))
	f.Add([]byte(`{"at":1,"stored":-1}`))
	f.Add([]byte(`{"at":9223372036854775807,"disk_free":1152921504606846976,"disk_total":1152921504606846976}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var s StoreSummary
		if err := decodeStated(data, &s); err != nil {
			return
		}
		if err := s.check(time.Now().UnixNano()); err != nil {
			return
		}
		for _, fg := range s.figures() {
			if fg.v < 0 || fg.v > fg.max {
				t.Fatalf("accepted %s = %d", fg.name, fg.v)
			}
		}
		if s.DiskFree > s.DiskTotal {
			t.Fatal("accepted more free than total")
		}
		var zero StoreSummary
		s.changed(&zero)
		zero.changed(&s)
	})
}
