package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/testnet"
)

// benchBadPeers times one fetch from an honest seed alone, then the same
// fetch when two more hosts hold the layer: one that stalls (claims the
// chunks, never sends them) and one that lies (sends corrupt chunks).
func benchBadPeers(ctx context.Context, t *table, bin, dir string, size int64) error {
	fmt.Fprintln(os.Stderr, "fetch with a stalled and a lying peer")
	work := filepath.Join(dir, "badpeers")
	img := filepath.Join(work, "img", "disk.raw")
	os.MkdirAll(filepath.Dir(img), 0o755)
	defer os.RemoveAll(work)
	if err := writeRandom(img, int(size), 77); err != nil {
		return err
	}
	start := func(name string, args ...string) (*testnet.Daemon, error) {
		return testnet.StartDaemon(ctx, bin, filepath.Join(work, name), append([]string{"--announce-interval", "200ms"}, args...)...)
	}
	seed, err := start("seed")
	if err != nil {
		return err
	}
	defer seed.Stop()
	if _, err := seed.Client.Add(ctx, api.AddRequest{Name: "bad:1", Path: img, Chunking: "cdc"}, nil); err != nil {
		return err
	}
	addr := func(d *testnet.Daemon) (string, error) {
		id, err := d.Client.Identity(ctx)
		if err != nil || len(id.Addrs) == 0 {
			return "", fmt.Errorf("peer address: %v", err)
		}
		return id.Addrs[0], nil
	}
	seedAddr, err := addr(seed)
	if err != nil {
		return err
	}
	fetch := func(name string, peers ...string) (time.Duration, *api.FetchResult, error) {
		var args []string
		for _, p := range peers {
			args = append(args, "--peer", p)
		}
		d, err := start(name, args...)
		if err != nil {
			return 0, nil, err
		}
		defer d.Stop()
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if _, err := d.Client.Resolve(ctx, "bad:1"); err == nil {
				break
			} else if time.Now().After(deadline) {
				return 0, nil, err
			}
		}
		t0 := time.Now()
		r, err := d.Client.Fetch(ctx, "bad:1", nil)
		return time.Since(t0), &r, err
	}
	alone, _, err := fetch("alone", seedAddr)
	if err != nil {
		return err
	}
	var bad []string
	for _, role := range []string{"--test-stall-serve", "--test-corrupt-serve"} {
		d, err := start("holder"+role, "--peer", seedAddr, role)
		if err != nil {
			return err
		}
		defer d.Stop()
		if _, err := d.Client.Add(ctx, api.AddRequest{Name: "bad:1", Path: img, Chunking: "cdc"}, nil); err != nil {
			return err
		}
		a, err := addr(d)
		if err != nil {
			return err
		}
		bad = append(bad, a)
	}
	with, r, err := fetch("with-bad", append([]string{seedAddr}, bad...)...)
	if err != nil {
		return err
	}
	ratio := with.Seconds() / alone.Seconds()
	t.add(fmt.Sprintf("fetch %d MiB from an honest seed alone", size>>20), fmt.Sprintf("%.2f s", alone.Seconds()), "", nil)
	t.add("  the same with a stalled and a lying holder beside it", fmt.Sprintf("%.2f s (%.2fx; %d peers sent bytes)", with.Seconds(), ratio, len(r.Peers)), "completes, verified", check(r.Layer.State == "complete"))
	return nil
}
