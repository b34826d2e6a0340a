package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/p2pimg/p2pimg/testnet"
)

// benchFleet is the real-daemons fleet row: fleet daemons on loopback
// (the testnet's 3 keepers among them) at the default announce interval;
// one publishes layers tiny layers while the others run; once every
// daemon lists every layer, each daemon's CPU (from /proc) and catalogue
// bytes (its metrics) are measured over an idle window, and every daemon
// is asked again whether it lists every layer.
func benchFleet(ctx context.Context, t *table, bin, dir string, fleet, layers int) error {
	fmt.Fprintf(os.Stderr, "fleet: %d daemons, %d layers published by one\n", fleet, layers)
	const port = 19400
	l, err := testnet.Up(ctx, bin, filepath.Join(dir, "fleet"), fleet, testnet.UpOptions{Announce: 10 * time.Second, MetricsPort: port})
	if err != nil {
		return err
	}
	defer l.Down(ctx, false)
	cls := l.Clients()
	rate, err := addMany(ctx, cls[0], filepath.Join(dir, "fleet-files"), "fleet", layers, 8)
	if err != nil {
		return err
	}
	listed, err := waitListed(ctx, cls, layers, 2*time.Second, 15*time.Minute)
	if err != nil {
		return err
	}
	// Let the last pulls, the catalogue passes and the mesh settle first.
	if err := sleepCtx(ctx, 30*time.Second); err != nil {
		return err
	}
	idle := 60 * time.Second
	if t.smoke {
		idle = 20 * time.Second
	}
	cpu0, bytes0 := fleetCounters(l, port)
	start := time.Now()
	if err := sleepCtx(ctx, idle); err != nil {
		return err
	}
	cpu1, bytes1 := fleetCounters(l, port)
	secs := time.Since(start).Seconds()
	var keepers, others, bps []float64
	var each []string
	for i := range cpu0 {
		c := (cpu1[i] - cpu0[i]) / secs * 100
		each = append(each, fmt.Sprintf("%.2f", c))
		if i < 3 { // the testnet's keepers are nodes 1-3
			keepers = append(keepers, c)
		} else {
			others = append(others, c)
		}
		bps = append(bps, (bytes1[i]-bytes0[i])/secs)
	}
	fmt.Fprintf(os.Stderr, "idle CPU %% of a core, node by node (1-3 keepers, 1 the publisher): %s\n", strings.Join(each, " "))
	missing := 0
	for _, cl := range cls {
		if ls, err := cl.Catalog(ctx); err != nil || len(ls) < layers {
			missing++
		}
	}
	t.add(fmt.Sprintf("fleet: %d tiny layers published by 1 of %d daemons", layers, fleet), fmt.Sprintf("%.0f adds/s", rate), "", nil)
	t.add("  every daemon lists every layer, after the last add", fmt.Sprintf("%.1f s", listed.Seconds()), "", nil)
	t.add(fmt.Sprintf("  idle CPU per daemon, %d non-keepers: median (max)", len(others)), fmt.Sprintf("%.2f%% (%.2f%%) of a core", median(slices.Clone(others)), slices.Max(others)), "< 1% of a core", check(slices.Max(others) < 1))
	t.add("  idle CPU per daemon, the 3 Raft keepers: median (max)", fmt.Sprintf("%.2f%% (%.2f%%) of a core", median(slices.Clone(keepers)), slices.Max(keepers)), "< 1% of a core", check(slices.Max(keepers) < 1))
	t.add("  idle catalogue bytes per daemon per second, sent + received: median (max)", fmt.Sprintf("%.0f (%.0f) B/s", median(slices.Clone(bps)), slices.Max(bps)), "<= 2 KB/s", check(slices.Max(bps) <= 2000))
	t.add("  every daemon lists every layer after the idle window", fmt.Sprintf("%d of %d", fleet-missing, fleet), "all", check(missing == 0))
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}
