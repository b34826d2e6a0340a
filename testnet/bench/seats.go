package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/p2pimg/p2pimg/license"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/client"
	"github.com/p2pimg/p2pimg/testnet"
)

// benchSeats times seat claims on a 5-node testnet with 3 keepers: one
// claimer at a time from a host that is not a keeper (its request goes to
// the leader over libp2p, which commits it through Raft with an fsync on
// each keeper), then 8 concurrent claimers spread over the hosts.
func benchSeats(ctx context.Context, t *table, bin, dir string) error {
	fmt.Fprintln(os.Stderr, "licence seat claims on a 5-node testnet, 3 keepers")
	tn := filepath.Join(dir, "seat-testnet")
	l, err := testnet.Up(ctx, bin, tn, 5, testnet.UpOptions{Keepers: 3})
	if err != nil {
		return err
	}
	defer l.Down(ctx, false)
	cls := l.Clients()
	b, err := os.ReadFile(testnet.IssuerKey(tn))
	if err != nil {
		return err
	}
	key, err := license.ParseIssuerKey(b)
	if err != nil {
		return err
	}
	lic, err := license.Issue(key, "bench", 1<<20, 1, time.Now(), time.Time{})
	if err != nil {
		return err
	}
	if _, err := cls[4].InstallLicense(ctx, lic.Text()); err != nil {
		return err
	}
	claim := func(cl *client.Client, consumer string) (time.Duration, error) {
		start := time.Now()
		_, err := cl.Claim(ctx, api.ClaimRequest{Product: "bench", Consumer: consumer})
		return time.Since(start), err
	}
	for i := range 20 { // warm up: connections, leader known
		if _, err := claim(cls[4], fmt.Sprintf("warm-%d", i)); err != nil {
			return err
		}
	}
	var lat []float64
	for i := range samples.claims {
		d, err := claim(cls[4], fmt.Sprintf("seq-%d", i))
		if err != nil {
			return err
		}
		lat = append(lat, float64(d.Microseconds())/1000)
	}
	sort.Float64s(lat)
	p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
	t.add("seat claim latency, 3 keepers, from a non-keeper host: p50", fmt.Sprintf("%.1f ms (%d claims)", p50, len(lat)), "< 20 ms", check(p50 < 20))
	t.add("seat claim latency: p99", fmt.Sprintf("%.1f ms", p99), "< 100 ms", check(p99 < 100))

	var n atomic.Int64
	var wg sync.WaitGroup
	cctx, cancel := context.WithTimeout(ctx, samples.burst)
	defer cancel()
	start := time.Now()
	var firstErr atomic.Value
	for w := range 8 {
		wg.Go(func() {
			cl := cls[w%len(cls)]
			for i := 0; cctx.Err() == nil; i++ {
				if _, err := cl.Claim(cctx, api.ClaimRequest{Product: "bench", Consumer: fmt.Sprintf("c%d-%d", w, i)}); err != nil {
					if cctx.Err() == nil {
						firstErr.CompareAndSwap(nil, err)
					}
					return
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	if e, ok := firstErr.Load().(error); ok {
		return e
	}
	rate := float64(n.Load()) / time.Since(start).Seconds()
	t.add("seat claims per second, 8 concurrent claimers on 5 hosts", fmt.Sprintf("%.0f /s", rate), "", nil)
	return nil
}
