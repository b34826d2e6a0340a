package fetch

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/time/rate"
)

// A background fetch starts capped at yieldRate (the first reads of a
// layer just exposed are coming), lifts the cap after yieldQuiet without
// reads, drops it again while an on-demand fetch is in flight and for
// yieldQuiet after, then lifts it (on a fake clock).
func TestBehindYieldsToReads(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fr := &Fetcher{}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		lim := capFrom(fr.Behind(ctx))
		step := func(d time.Duration) {
			time.Sleep(d)
			synctest.Wait()
		}
		if lim.Limit() != yieldRate || lim.Tokens() > 0 {
			t.Fatalf("just started: cap %v with %.0f bytes of burst, want %v and none", lim.Limit(), lim.Tokens(), rate.Limit(yieldRate))
		}
		step(yieldQuiet / 2)
		if lim.Limit() != yieldRate {
			t.Fatalf("started %v ago: cap %v, want still %v", yieldQuiet/2, lim.Limit(), rate.Limit(yieldRate))
		}
		step(yieldQuiet/2 + 3*yieldTick)
		if lim.Limit() != rate.Inf {
			t.Fatalf("no read waiting: cap %v, want none", lim.Limit())
		}
		fr.demand.begin()
		step(2 * yieldTick)
		if lim.Limit() != yieldRate {
			t.Fatalf("a read waiting: cap %v, want %v", lim.Limit(), rate.Limit(yieldRate))
		}
		if n := lim.Tokens(); n > float64(yieldRate)*yieldTick.Seconds()*3 {
			t.Fatalf("%.0f bytes of burst left when reads began waiting", n)
		}
		fr.demand.end()
		step(yieldQuiet / 2)
		if lim.Limit() != yieldRate {
			t.Fatalf("just after the read: cap %v, want still %v", lim.Limit(), rate.Limit(yieldRate))
		}
		step(yieldQuiet)
		if lim.Limit() != rate.Inf {
			t.Fatalf("reads quiet: cap %v, want none", lim.Limit())
		}
	})
}
