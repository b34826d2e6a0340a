package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/testnet"
)

// benchLayers adds two images of size bytes that share 80% of their files
// (same paths, same bytes) on one host, and fetches them, first A then B,
// on another: stored bytes against one image, and bytes moved for B
// against B's own part.
func benchLayers(ctx context.Context, t *table, bin, dir string, size int64) error {
	fmt.Fprintln(os.Stderr, "two images sharing 80% of their files")
	const fileSize = 4 << 20
	files := int(size / fileSize)
	imgA, imgB := filepath.Join(dir, "layers", "a"), filepath.Join(dir, "layers", "b")
	var unique int64
	for i := range files {
		own := i%5 == 4 // one file in five differs: 20%
		for k, root := range []string{imgA, imgB} {
			seed := uint64(i)
			if own {
				seed = uint64(i) + uint64(k+1)<<32
			}
			p := filepath.Join(root, fmt.Sprintf("d%02d", i%16), fmt.Sprintf("f%04d.bin", i))
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			if err := writeRandom(p, fileSize, seed); err != nil {
				return err
			}
			if own && k == 1 {
				unique += fileSize
			}
		}
	}
	defer os.RemoveAll(filepath.Join(dir, "layers"))
	l, err := testnet.Up(ctx, bin, filepath.Join(dir, "layers-testnet"), 2, testnet.UpOptions{})
	if err != nil {
		return err
	}
	defer l.Down(ctx, false)
	cls := l.Clients()
	resA, err := cls[0].Add(ctx, api.AddRequest{Name: "img-a:1", Path: imgA}, nil)
	if err != nil {
		return err
	}
	one, err := cls[0].Stats(ctx)
	if err != nil {
		return err
	}
	resB, err := cls[0].Add(ctx, api.AddRequest{Name: "img-b:1", Path: imgB}, nil)
	if err != nil {
		return err
	}
	both, err := cls[0].Stats(ctx)
	if err != nil {
		return err
	}
	ratio := float64(both.StoredBytes) / float64(one.StoredBytes)
	t.add("two 80%-shared images: stored bytes / one image", fmt.Sprintf("%.2fx (%d MiB / %d MiB)", ratio, both.StoredBytes>>20, one.StoredBytes>>20), "<= 1.25x", check(ratio <= 1.25))
	id, err := cls[0].Identity(ctx)
	if err != nil {
		return err
	}
	for name, cid := range map[string]string{"img-a:1": resA.Layer.CID, "img-b:1": resB.Layer.CID} {
		if err := waitLayer(ctx, cls[1], name, cid, id.PeerID); err != nil {
			return err
		}
	}
	if _, err := cls[1].Fetch(ctx, "img-a:1", nil); err != nil {
		return err
	}
	r, err := cls[1].Fetch(ctx, "img-b:1", nil)
	if err != nil {
		return err
	}
	moved := float64(r.FetchedBytes) / float64(unique)
	t.add("  host with A fetches B: bytes moved / B's own files", fmt.Sprintf("%.3fx (%d MiB)", moved, r.FetchedBytes>>20), "<= 1.1x", check(moved <= 1.1))
	return nil
}

func writeRandom(p string, n int, seed uint64) error {
	r := rand.New(rand.NewPCG(seed, 11))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for k := range 8 {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	return os.WriteFile(p, b, 0o644)
}
