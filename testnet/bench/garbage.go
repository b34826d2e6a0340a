package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/testnet"
)

// benchGarbageRSS is a fetcher's peak memory (VmHWM) while one of the two
// holders it fetches from answers every chunk request with 8 MiB garbage
// items, beside the same fetch from two honest holders. fetcherBin may be
// an older build (the holders run bin, which can misbehave on request).
func benchGarbageRSS(ctx context.Context, t *table, bin, fetcherBin, dir string, size int64, runs int) error {
	fmt.Fprintln(os.Stderr, "fetcher memory with a peer sending 8 MiB garbage items")
	work := filepath.Join(dir, "garbage")
	img := filepath.Join(work, "img", "disk.raw")
	os.MkdirAll(filepath.Dir(img), 0o755)
	defer os.RemoveAll(work)
	if err := writeRandom(img, int(size), 78); err != nil {
		return err
	}
	start := func(b, name string, args ...string) (*testnet.Daemon, string, string, error) {
		d, err := testnet.StartDaemon(ctx, b, filepath.Join(work, name), append([]string{"--announce-interval", "200ms"}, args...)...)
		if err != nil {
			return nil, "", "", err
		}
		id, err := d.Client.Identity(ctx)
		if err != nil || len(id.Addrs) == 0 {
			d.Stop()
			return nil, "", "", fmt.Errorf("%s: peer address: %v", name, err)
		}
		return d, id.Addrs[0], id.PeerID, nil
	}
	holder := func(name string, args ...string) (string, string, error) {
		d, addr, id, err := start(bin, name, args...)
		if err != nil {
			return "", "", err
		}
		context.AfterFunc(ctx, func() { d.Stop() })
		_, err = d.Client.Add(ctx, api.AddRequest{Name: "garbage:1", Path: img, Chunking: "cdc"}, nil)
		return addr, id, err
	}
	seedAddr, seedID, err := holder("seed")
	if err != nil {
		return err
	}
	honestAddr, honestID, err := holder("honest", "--peer", seedAddr)
	if err != nil {
		return err
	}
	garbageAddr, garbageID, err := holder("garbage", "--peer", seedAddr, "--test-garbage-serve", strconv.Itoa(8<<20))
	if err != nil {
		return err
	}
	peak := func(name, otherAddr, otherID string) (int64, error) {
		d, _, _, err := start(fetcherBin, name, "--peer", seedAddr, "--peer", otherAddr)
		if err != nil {
			return 0, err
		}
		defer d.Stop()
		for _, h := range []string{seedID, otherID} {
			if err := waitLayer(ctx, d.Client, "garbage:1", "", h); err != nil {
				return 0, err
			}
		}
		if _, err := d.Client.Fetch(ctx, "garbage:1", nil); err != nil {
			return 0, err
		}
		return d.PeakRSS()
	}
	var honest, garbage []float64
	for range runs {
		h, err := peak(fmt.Sprintf("f-honest-%d", len(honest)), honestAddr, honestID)
		if err != nil {
			return err
		}
		g, err := peak(fmt.Sprintf("f-garbage-%d", len(garbage)), garbageAddr, garbageID)
		if err != nil {
			return err
		}
		honest, garbage = append(honest, float64(h)), append(garbage, float64(g))
	}
	hm, gm := median(honest), median(garbage)
	label := ""
	if fetcherBin != bin {
		label = " (fetcher " + filepath.Base(fetcherBin) + ")"
	}
	t.add(fmt.Sprintf("fetcher peak RSS, %d MiB from 2 honest holders%s", size>>20, label), fmt.Sprintf("%.0f MiB", hm/(1<<20)), "", nil)
	t.add("  the same, one holder sending 8 MiB garbage items", fmt.Sprintf("%.0f MiB (%.2fx)", gm/(1<<20), gm/hm), "<= 1.25x the honest figure", check(gm <= 1.25*hm))
	return nil
}
