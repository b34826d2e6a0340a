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
	added, err := seed.Client.Add(ctx, api.AddRequest{Name: "bad:1", Path: img, Chunking: "cdc"}, nil)
	if err != nil {
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
	seedID, err := seed.Client.Identity(ctx)
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
		if err := waitLayer(ctx, d.Client, "bad:1", added.Layer.CID, seedID.PeerID); err != nil {
			return 0, nil, err
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

// benchGossipFlood times how long a new layer takes to reach another
// host's catalogue, with and without a member that gossips as fast as it
// can.
func benchGossipFlood(ctx context.Context, t *table, bin, dir string) error {
	fmt.Fprintln(os.Stderr, "gossip delivery with a flooding peer")
	work := filepath.Join(dir, "flood")
	defer os.RemoveAll(work)
	src := filepath.Join(work, "src")
	os.MkdirAll(src, 0o755)
	a, err := testnet.StartDaemon(ctx, bin, filepath.Join(work, "a"), "--announce-interval", "1s")
	if err != nil {
		return err
	}
	defer a.Stop()
	id, err := a.Client.Identity(ctx)
	if err != nil {
		return err
	}
	b, err := testnet.StartDaemon(ctx, bin, filepath.Join(work, "b"), "--announce-interval", "1s", "--peer", id.Addrs[0])
	if err != nil {
		return err
	}
	defer b.Stop()
	delivery := func(tag string) (float64, error) {
		var ms []float64
		for i := range samples.deliveries {
			os.WriteFile(filepath.Join(src, "f"), []byte(fmt.Sprintf("%s %d", tag, i)), 0o644)
			name := fmt.Sprintf("flood-%s:%d", tag, i)
			t0 := time.Now()
			added, err := a.Client.Add(ctx, api.AddRequest{Name: name, Path: src}, nil)
			if err != nil {
				return 0, err
			}
			for { // as often as it can: the delay is the figure
				if cid, err := b.Client.Resolve(ctx, name); err == nil && cid == added.Layer.CID {
					break
				}
				if time.Since(t0) > 30*time.Second {
					return 0, fmt.Errorf("%s never reached the other host", name)
				}
				time.Sleep(2 * time.Millisecond)
			}
			ms = append(ms, float64(time.Since(t0).Microseconds())/1000)
		}
		return median(ms), nil
	}
	quiet, err := delivery("quiet")
	if err != nil {
		return err
	}
	f, err := testnet.StartDaemon(ctx, bin, filepath.Join(work, "f"), "--peer", id.Addrs[0], "--test-gossip-flood")
	if err != nil {
		return err
	}
	defer f.Stop()
	time.Sleep(time.Second) // let the flood start
	flooded, err := delivery("flood")
	if err != nil {
		return err
	}
	t.add(fmt.Sprintf("gossip delivery of a new layer to another host, median of %d", samples.deliveries), fmt.Sprintf("%.0f ms", quiet), "", nil)
	t.add("  the same while a member floods the topic", fmt.Sprintf("%.0f ms (%.2fx)", flooded, flooded/quiet), "", nil)
	return nil
}
