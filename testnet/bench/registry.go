package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/crane"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"golang.org/x/sync/errgroup"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/client"
	"github.com/p2pimg/p2pimg/testnet"
)

// benchRegistry runs two daemons with their registry mirrors on loopback.
// Host 1 imports image A (five layers of size/5) and image B (A's first
// four layers and one of its own: 80% shared). Host 2 then asks its mirror
// for a blob of A that only host 1 has (time to first byte), pulls A
// whole, then B: chunk bytes moved for B against B's own blobs.
func benchRegistry(ctx context.Context, t *table, bin, dir string, size int64) error {
	fmt.Fprintln(os.Stderr, "registry mirror: a blob only a peer has, and an image sharing 80% of its layers")
	layerSize := size / 5
	var ls []v1.Layer
	for range 6 {
		l, err := random.Layer(layerSize, "application/vnd.oci.image.layer.v1.tar")
		if err != nil {
			return err
		}
		ls = append(ls, l)
	}
	imgA, err := mutate.AppendLayers(empty.Image, ls[:5]...)
	if err != nil {
		return err
	}
	imgB, err := mutate.AppendLayers(empty.Image, append(append([]v1.Layer{}, ls[:4]...), ls[5])...)
	if err != nil {
		return err
	}
	work := filepath.Join(dir, "registry")
	defer os.RemoveAll(work)
	addrs, err := freeAddrs(2)
	if err != nil {
		return err
	}
	l, err := testnet.Up(ctx, bin, filepath.Join(dir, "registry-testnet"), 2, testnet.UpOptions{Registry: addrs})
	if err != nil {
		return err
	}
	defer l.Down(ctx, false)
	cls := l.Clients()
	for name, img := range map[string]v1.Image{"bench/a:1": imgA, "bench/b:1": imgB} {
		p := filepath.Join(work, name[6:7])
		lp, err := layout.Write(p, empty.Index)
		if err != nil {
			return err
		}
		if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": name})); err != nil {
			return err
		}
		if _, err := cls[0].Import(ctx, api.ImportRequest{Path: p}, nil); err != nil {
			return fmt.Errorf("import %s: %w", name, err)
		}
	}
	for _, ref := range []string{"oci/ref/bench/a:1", "oci/ref/bench/b:1"} {
		if err := waitResolve(ctx, cls[1], ref); err != nil {
			return err
		}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	defer tr.CloseIdleConnections()
	var ttfbs []float64
	for _, l := range ls[:5] { // each of A's layers once: five samples
		ttfb, err := firstByte(ctx, tr, cls[1], addrs[1], l)
		if err != nil {
			return err
		}
		ttfbs = append(ttfbs, ttfb.Seconds()*1000)
	}
	worst := slices.Max(ttfbs)
	ttfb := median(ttfbs)
	t.add("registry: time to first byte of a blob only a peer has (loopback)", fmt.Sprintf("%.1f ms median of %d (max %.1f; %d MiB blobs)", ttfb, len(ttfbs), worst, layerSize>>20), "< 50 ms", check(ttfb < 50))

	if err := pullImage(addrs[1]+"/bench/a:1", tr, 1, nil); err != nil {
		return fmt.Errorf("pull A through host 2: %w", err)
	}
	before, err := chunkBytesIn(ctx, cls[1])
	if err != nil {
		return err
	}
	if err := pullImage(addrs[1]+"/bench/b:1", tr, 1, nil); err != nil {
		return fmt.Errorf("pull B through host 2: %w", err)
	}
	after, err := chunkBytesIn(ctx, cls[1])
	if err != nil {
		return err
	}
	own, err := ls[5].Size()
	if err != nil {
		return err
	}
	for _, f := range []func() (int64, error){imgB.Size, func() (int64, error) { b, err := imgB.RawConfigFile(); return int64(len(b)), err }} {
		n, err := f()
		if err != nil {
			return err
		}
		own += n
	}
	ratio := float64(after-before) / float64(own)
	t.add("registry: second image sharing 80% of its layers: bytes moved / its unshared blobs", fmt.Sprintf("%.3fx (%.1f MiB)", ratio, float64(after-before)/(1<<20)), "<= 1.1x", check(ratio <= 1.1))
	return nil
}

// firstByte asks host's mirror for blob l, which only a peer has, and
// times its first byte; it reads the rest (the mirror checks the digest
// before the last chunk) and the status.
func firstByte(ctx context.Context, rt http.RoundTripper, cl *client.Client, addr string, l v1.Layer) (time.Duration, error) {
	d, err := l.Digest()
	if err != nil {
		return 0, err
	}
	if err := waitResolve(ctx, cl, "oci/blob:sha256-"+d.Hex); err != nil {
		return 0, err
	}
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v2/bench/a/blobs/"+d.String(), nil)
	if err != nil {
		return 0, err
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, err = io.ReadFull(resp.Body, make([]byte, 1))
	ttfb := time.Since(start)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
	}
	if err != nil || resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("blob %s from %s: %s %v", d, addr, resp.Status, err)
	}
	return ttfb, nil
}

// pullImage pulls ref with crane and reads every layer (checked against
// its digest), jobs layers at once as container runtimes do (containerd's
// CRI and Docker fetch 3 at a time by default, skopeo 6); with trace, a
// line per layer: seconds from the start to its first and last byte.
func pullImage(ref string, rt http.RoundTripper, jobs int, trace io.Writer) error {
	start := time.Now()
	img, err := crane.Pull(ref, crane.Insecure, crane.WithTransport(rt))
	if err != nil {
		return err
	}
	ls, err := img.Layers()
	if err != nil {
		return err
	}
	var g errgroup.Group
	g.SetLimit(max(jobs, 1))
	var mu sync.Mutex
	for k, l := range ls {
		g.Go(func() error {
			rc, err := l.Compressed()
			if err != nil {
				return err
			}
			defer rc.Close()
			b := make([]byte, 1)
			_, err = io.ReadFull(rc, b)
			first := time.Since(start)
			if err == nil {
				_, err = io.Copy(io.Discard, rc)
			}
			if err != nil {
				return err
			}
			if trace != nil {
				mu.Lock()
				fmt.Fprintf(trace, "layer %d\t%.2f\t%.2f\n", k, first.Seconds(), time.Since(start).Seconds())
				mu.Unlock()
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	_, err = img.RawConfigFile()
	return err
}

func chunkBytesIn(ctx context.Context, cl *client.Client) (int64, error) {
	ps, err := cl.Peers(ctx)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, p := range ps {
		n += p.BytesIn
	}
	return n, nil
}

// waitResolve waits until the host's catalogue maps name.
func waitResolve(ctx context.Context, cl *client.Client, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if c, err := cl.Resolve(ctx, name); err == nil && c != "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s never reached the host's catalogue: %w", name, ctx.Err())
		case <-tick.C:
		}
	}
}

// freeAddrs are n loopback addresses with ports free right now.
func freeAddrs(n int) ([]string, error) {
	var out []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		out = append(out, ln.Addr().String())
		ln.Close()
	}
	return out, nil
}
