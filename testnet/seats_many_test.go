package testnet_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/p2pimg/p2pimg/node/api"
)

// More seats held than a whole-table gossip could carry (about 7,000
// filled its 1 MiB limit): 7,500 seats held by one host stay valid through
// several renewals, every host lists them all, and a waiter on another
// host gets a seat as soon as one is released.
func TestSeatsManyHeld(t *testing.T) {
	const n = 7500
	// Leases of 6 s rather than seatNet's 2 s: on a loaded machine a keeper
	// election alone can outlast a 2 s lease while 7,500 seats are renewed.
	net, _ := seatNetTTL(t, 5, n, 1, "6s", "2s")
	holder, waiter := net.Nodes[3], net.Nodes[4]
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	start := time.Now()
	for range 48 {
		wg.Go(func() {
			for i := next.Add(1); i <= n; i = next.Add(1) {
				if _, err := holder.Node().Claim(ctx, api.ClaimRequest{Product: "winsrv", Consumer: fmt.Sprintf("vm%d", i)}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d claims in %v", n, time.Since(start).Round(time.Millisecond))
	// Leases are 6 s, renewed every 2 s: wait for three renewal rounds.
	renewed := time.Now().Add(6100 * time.Millisecond)
	last := ""
	defer func() {
		if t.Failed() {
			t.Log(last)
		}
	}()
	net.Eventually(30*time.Second, "every seat listed and held after renewals", func() bool {
		for _, nd := range []int{0, 4} {
			l, err := net.Nodes[nd].Client.Licenses(ctx)
			if err != nil || len(l.Holders) != n || l.Licenses[0].Free != 0 {
				last = fmt.Sprintf("node %d lists %d holders (err %v)", nd+1, len(l.Holders), err)
				return false
			}
		}
		l, err := holder.Client.Licenses(ctx)
		if err != nil || len(l.Held) != n {
			last = fmt.Sprintf("the holder holds %d (err %v)", len(l.Held), err)
			return false
		}
		for _, g := range l.Held {
			if !g.Valid {
				last = fmt.Sprintf("token %d is no longer valid on its holder", g.Token)
				return false
			}
		}
		return time.Now().After(renewed)
	})
	got := make(chan error, 1)
	go func() {
		_, err := waiter.Client.Claim(ctx, api.ClaimRequest{Product: "winsrv", Consumer: "late", Wait: true})
		got <- err
	}()
	if _, err := holder.Client.Release(ctx, api.ReleaseRequest{Product: "winsrv", Consumer: "vm17"}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the waiter got no seat after a release")
	}
}
