package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/client"
	"github.com/p2pimg/p2pimg/testnet"
)

// addMany adds n tiny layers (distinct contents) named PREFIXi:1 through
// cl with callers concurrent callers, and returns the adds per second.
func addMany(ctx context.Context, cl *client.Client, dir, prefix string, n, callers int) (float64, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	start := time.Now()
	for range callers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				p := filepath.Join(dir, fmt.Sprintf("%s%d", prefix, i))
				if err := os.WriteFile(p, []byte(fmt.Sprintf("layer %s %d\n", prefix, i)), 0o644); err != nil {
					errs <- err
					return
				}
				if _, err := cl.Add(ctx, api.AddRequest{Name: fmt.Sprintf("%s%d:1", prefix, i), Path: p}, nil); err != nil {
					errs <- fmt.Errorf("add %s%d: %w", prefix, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errs:
		return 0, err
	default:
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// waitListed waits until every client lists at least n layers, asking
// each that does not yet every period (a listing of many layers is not
// free); it returns how long that took.
func waitListed(ctx context.Context, cls []*client.Client, n int, every, limit time.Duration) (time.Duration, error) {
	start := time.Now()
	done := make([]bool, len(cls))
	for {
		left := 0
		for i, cl := range cls {
			if !done[i] {
				ls, err := cl.Catalog(ctx)
				done[i] = err == nil && len(ls) >= n
			}
			if !done[i] {
				left++
			}
		}
		if left == 0 {
			return time.Since(start), nil
		}
		if time.Since(start) > limit {
			return 0, fmt.Errorf("after %s, %d of %d hosts still do not list all %d layers", limit, left, len(cls), n)
		}
		if err := sleepCtx(ctx, every); err != nil {
			return 0, err
		}
	}
}

// benchCatalogue: one host publishes n layers into 3 (listed everywhere,
// and at the single-host rate?).
func benchCatalogue(ctx context.Context, t *table, bin, dir string, n int) error {
	fmt.Fprintf(os.Stderr, "catalogue: %d layers published into 3 hosts\n", n)
	one, err := testnet.Up(ctx, bin, filepath.Join(dir, "cat-one"), 1, testnet.UpOptions{})
	if err != nil {
		return err
	}
	alone, err := addMany(ctx, one.Clients()[0], filepath.Join(dir, "cat-files-one"), "solo", n, 4)
	one.Down(ctx, false)
	if err != nil {
		return err
	}
	l, err := testnet.Up(ctx, bin, filepath.Join(dir, "cat-three"), 3, testnet.UpOptions{})
	if err != nil {
		return err
	}
	cls := l.Clients()
	withPeers, err := addMany(ctx, cls[0], filepath.Join(dir, "cat-files-three"), "app", n, 4)
	if err != nil {
		l.Down(ctx, false)
		return err
	}
	after, err := waitListed(ctx, cls, n, 50*time.Millisecond, 5*time.Minute)
	l.Down(ctx, false)
	if err != nil {
		return err
	}
	ratio := withPeers / alone
	t.add(fmt.Sprintf("%d layers from one host into 3: adds/s with 2 peers / alone", n), fmt.Sprintf("%.0f / %.0f /s = %.2fx", withPeers, alone, ratio), ">= 0.9x", check(ratio >= 0.9))
	t.add("  then every host lists every layer, after the last add", fmt.Sprintf("%.2f s", after.Seconds()), "<= 5 s", check(after <= 5*time.Second))
	return nil
}

// fleetCounters reads each daemon's CPU seconds (/proc) and catalogue
// bytes (its metrics).
func fleetCounters(l *testnet.Local, port int) (cpu, bytes []float64) {
	tick := 100.0 // USER_HZ on Linux
	for _, nd := range l.Nodes {
		var c float64
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", nd.PID)); err == nil {
			f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
			if len(f) > 12 {
				u, _ := strconv.ParseFloat(f[11], 64)
				s, _ := strconv.ParseFloat(f[12], 64)
				c = (u + s) / tick
			}
		}
		cpu = append(cpu, c)
		bytes = append(bytes, metricSum(fmt.Sprintf("http://127.0.0.1:%d/metrics", port+nd.Index), "p2pimg_catalog_bytes_total"))
	}
	return cpu, bytes
}

// metricSum adds up every series of a counter on a metrics page.
func metricSum(url, name string) float64 {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}
