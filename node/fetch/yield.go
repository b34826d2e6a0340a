package fetch

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/p2pimg/p2pimg/chunk"
)

// Reads first: while on-demand fetches (FetchChunk, for reads of a lazy
// view) are in flight, for yieldQuiet after the last one ended, and for
// its first yieldQuiet, a background fetch run with Behind's context
// moves at most yieldRate. A
// read then has the peers' upload and this host's download to itself
// instead of queueing behind the background's pipelined batches, and the
// background goes back to full speed as soon as reads pause.
const (
	yieldQuiet = 250 * time.Millisecond
	yieldRate  = 4 << 20 // bytes per second
	yieldTick  = 10 * time.Millisecond
)

// demand counts on-demand fetches.
type demand struct {
	mu       sync.Mutex
	inflight int
	last     time.Time
}

func (d *demand) begin() {
	d.mu.Lock()
	d.inflight++
	d.mu.Unlock()
}

func (d *demand) end() {
	d.mu.Lock()
	d.inflight--
	d.last = time.Now()
	d.mu.Unlock()
}

// touch counts as an on-demand fetch that just ended.
func (d *demand) touch(now time.Time) {
	d.mu.Lock()
	d.last = now
	d.mu.Unlock()
}

// busy reports whether reads are waiting for fetches, or just were.
func (d *demand) busy(now time.Time) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.inflight > 0 || now.Sub(d.last) < yieldQuiet
}

// Behind returns a context for a background fetch (the rest of a lazily
// exposed layer) that yields to on-demand fetches as described above; it
// replaces any cap WithCap set on ctx. Its watcher ends with ctx.
func (fr *Fetcher) Behind(ctx context.Context) context.Context {
	// It starts slow: the layer was just exposed and its first reads (a
	// guest booting) are about to come. Started at full speed, its first
	// pipelined batches held the reads' chunks up behind them for tens of
	// milliseconds, before the first tick could slow it down.
	now := time.Now()
	fr.demand.touch(now)
	lim := rate.NewLimiter(yieldRate, chunk.MaxChunkSize)
	lim.ReserveN(now, chunk.MaxChunkSize) // no burst
	go func() {
		t := time.NewTicker(yieldTick)
		defer t.Stop()
		slow := true
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				busy := fr.demand.busy(now)
				switch {
				case busy && !slow:
					lim.SetLimitAt(now, yieldRate)
					if n := int(lim.TokensAt(now)); n > 0 {
						lim.ReserveN(now, n) // no burst: the bound holds from now
					}
				case !busy && slow:
					lim.SetLimitAt(now, rate.Inf)
				}
				slow = busy
			}
		}
	}()
	return context.WithValue(ctx, capKey{}, lim)
}
