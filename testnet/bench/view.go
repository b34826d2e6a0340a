package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/client"
	"github.com/p2pimg/p2pimg/node/expose"
	"github.com/p2pimg/p2pimg/node/expose/fuseview"
	"github.com/p2pimg/p2pimg/testnet"
	"github.com/p2pimg/p2pimg/testnet/refimage"
)

// benchView measures exposure through the FUSE view: a lazy activation
// of an image the host lacks (first 4 KiB read, a boot-like trace of 2%
// of the image in scattered 64 KiB extents, bytes fetched by then),
// sequential and 4 KiB random reads through the view beside a checkout,
// and the disk an active layer costs beside its store. It needs root,
// /dev/fuse and overlayfs; elsewhere it says so in the table.
func benchView(ctx context.Context, t *table, bin, dir string, size int64) error {
	if err := viewWorks(dir); err != nil {
		t.add("fuse view rows", "skipped: "+err.Error(), "", nil)
		return nil
	}
	fmt.Fprintf(os.Stderr, "fuse view: lazy activation of a %d MiB image, reads through the view\n", size>>20)
	work := filepath.Join(dir, "view")
	img := filepath.Join(work, "disk.raw")
	os.MkdirAll(work, 0o755)
	f, err := os.Create(img)
	if err != nil {
		return err
	}
	err = refimage.Write(f, size, 21)
	f.Close()
	if err != nil {
		return err
	}
	a, err := testnet.StartDaemon(ctx, bin, filepath.Join(work, "a"), "--announce-interval", "200ms")
	if err != nil {
		return err
	}
	defer a.Kill()
	res, err := a.Client.Add(ctx, api.AddRequest{Name: "bench:view", Path: img}, nil)
	if err != nil {
		return err
	}
	id, err := a.Client.Identity(ctx)
	if err != nil {
		return err
	}
	root := filepath.Join(work, "root")
	b, err := testnet.StartDaemon(ctx, bin, filepath.Join(work, "b"), "--peer", id.Addrs[0], "--announce-interval", "200ms",
		"--root", root, "--expose", "fuse", "--lazy")
	if err != nil {
		return err
	}
	defer b.Stop()
	if err := waitLayer(ctx, b.Client, "bench:view", res.Layer.CID, ""); err != nil {
		return err
	}

	start := time.Now()
	act, err := b.Client.Activate(ctx, api.ActivateRequest{Layer: "bench:view", At: "/vm", Hosts: "self", Op: api.OpActivate})
	if err != nil {
		return err
	}
	if err := waitActive(ctx, b.Client, act.Time, 60*time.Second); err != nil {
		return err
	}
	activeAfter := time.Since(start)
	path := filepath.Join(root, "vm", "disk.raw")
	vf, err := os.Open(path)
	if err != nil {
		return err
	}
	buf := make([]byte, 64<<10)
	r := rand.New(rand.NewPCG(3, 3))
	if _, err := vf.ReadAt(buf[:4096], r.Int64N(size-4096)); err != nil {
		vf.Close()
		return fmt.Errorf("first read through the lazy view: %w", err)
	}
	first := time.Since(start)
	extents := int(size / 50 / int64(len(buf)))
	traceStart := time.Now()
	for range extents {
		if _, err := vf.ReadAt(buf, r.Int64N(size-int64(len(buf)))); err != nil {
			vf.Close()
			return fmt.Errorf("trace read through the lazy view: %w", err)
		}
	}
	trace := time.Since(traceStart)
	vf.Close()
	st, err := b.Client.Stats(ctx)
	if err != nil {
		return err
	}
	share := float64(st.StoredBytes) / float64(size)
	t.add(fmt.Sprintf("lazy activate %d MiB the host lacks: request -> first 4 KiB read", size>>20),
		fmt.Sprintf("%.0f ms (active after %.0f ms)", first.Seconds()*1000, activeAfter.Seconds()*1000), "< 200 ms", check(first < 200*time.Millisecond))
	t.add(fmt.Sprintf("  boot-like trace: %d scattered 64 KiB reads (2%%), one reader", extents),
		fmt.Sprintf("%.2f s", trace.Seconds()), "< 3 s", check(trace < 3*time.Second))
	t.add("  bytes here when the trace ended (the background fetch yields to reads)",
		fmt.Sprintf("%.1f%% (%d MiB)", share*100, st.StoredBytes>>20), "<= 10%", check(share <= 0.10))

	if err := waitComplete(ctx, b.Client, "bench:view", 10*time.Minute); err != nil {
		return err
	}
	return viewReads(ctx, t, b, path, work, size)
}

// viewReads compares reads through the view with reads of a checkout,
// and the disk the active layer uses beside its store.
func viewReads(ctx context.Context, t *table, b *testnet.Daemon, view, work string, size int64) error {
	out := filepath.Join(work, "checkout")
	if _, err := b.Client.Checkout(ctx, api.CheckoutRequest{Name: "bench:view", Dir: out}, nil); err != nil {
		return err
	}
	co := filepath.Join(out, "disk.raw")
	n := min(size, 1<<30)
	r, err := seqRounds(view, co, filesUnder(b.Data), n)
	if err != nil {
		return err
	}
	t.add(fmt.Sprintf("sequential read %d MiB, view / checkout, cold (median of %d rounds)", n>>20, len(r.cold)), r.cold.String(), ">= 0.7x", check(r.cold.ratio() >= 0.7))
	t.add("  the same, warm", r.warm.String(), ">= 0.9x", check(r.warm.ratio() >= 0.9))
	t.add("  the same, warm again", r.again.String(), "", nil)
	if _, err := readRate(view, n); err != nil { // warm again: the last round dropped it
		return err
	}
	rv, err := randomReads(view, n)
	if err != nil {
		return err
	}
	rc, err := randomReads(co, n)
	if err != nil {
		return err
	}
	t.add(fmt.Sprintf("4 KiB random reads/s in the first %d MiB, warm, one reader: view / checkout", n>>20), fmt.Sprintf("%.0f / %.0f (%.2fx)", rv, rc, rv/rc), "", nil)
	os.RemoveAll(out)
	st, err := b.Client.Stats(ctx)
	if err != nil {
		return err
	}
	used := diskUsed(b.Data)
	t.add(fmt.Sprintf("disk of the host with the %d MiB layer active (data dir / stored chunks)", size>>20),
		fmt.Sprintf("%.3fx (%d / %d MiB; views %d B)", float64(used)/float64(st.StoredBytes), used>>20, st.StoredBytes>>20, st.ViewBytes),
		"<= 1.01x", check(float64(used) <= 1.01*float64(st.StoredBytes)))
	return nil
}

// pairs are rates of the view and the checkout measured back to back,
// one pair a round: on a machine whose load swings, a ratio taken within a
// round means more than one of two medians.
type pairs []struct{ view, co float64 }

// ratio is the median of the rounds' view / checkout ratios.
func (p pairs) ratio() float64 {
	var xs []float64
	for _, r := range p {
		xs = append(xs, r.view/r.co)
	}
	return median(xs)
}

func (p pairs) String() string {
	var v, c []float64
	for _, r := range p {
		v, c = append(v, r.view), append(c, r.co)
	}
	return fmt.Sprintf("%.2fx (%.0f / %.0f MB/s)", p.ratio(), median(v)/1e6, median(c)/1e6)
}

type seqResult struct{ cold, warm, again pairs }

// seqRounds reads the first n bytes of the view and of the checkout in
// rounds: each cold (the packs', the view's and the checkout's pages
// dropped first), then warm, then warm again (the second read of a page
// moves it to the kernel's active list, a cost per page: a FUSE file's
// pages are 4 KiB, a checkout's on ext4 up to 2 MiB).
func seqRounds(view, co string, packs []string, n int64) (seqResult, error) {
	var res seqResult
	for range 3 {
		var rates [2][3]float64
		for k, p := range []string{view, co} {
			dropCache(append(packs, view, co)...)
			for j := range rates[k] {
				r, err := readRate(p, n)
				if err != nil {
					return res, err
				}
				rates[k][j] = r
			}
		}
		res.cold = append(res.cold, struct{ view, co float64 }{rates[0][0], rates[1][0]})
		res.warm = append(res.warm, struct{ view, co float64 }{rates[0][1], rates[1][1]})
		res.again = append(res.again, struct{ view, co float64 }{rates[0][2], rates[1][2]})
	}
	return res, nil
}

func viewWorks(dir string) error {
	if os.Geteuid() != 0 {
		return errors.New("not root")
	}
	if err := fuseview.Works(dir); err != nil {
		return fmt.Errorf("no FUSE here: %w", err)
	}
	if err := expose.OverlayWorks(dir); err != nil {
		return fmt.Errorf("no overlay mounts here: %w", err)
	}
	return nil
}

func waitActive(ctx context.Context, cl *client.Client, ts int64, d time.Duration) error {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		sts, err := cl.Activations(ctx)
		if err != nil {
			return err
		}
		for _, s := range sts {
			if s.Time == ts && s.State == api.StateActive {
				return nil
			}
			if s.Time == ts && s.State == api.StateFailed {
				return fmt.Errorf("activation failed: %s", s.Detail)
			}
		}
	}
	return fmt.Errorf("not active after %v", d)
}

func waitComplete(ctx context.Context, cl *client.Client, name string, d time.Duration) error {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		ls, err := cl.Layers(ctx)
		if err != nil {
			return err
		}
		for _, l := range ls {
			if l.Name == name && l.State == chunk.Complete {
				return nil
			}
		}
	}
	return fmt.Errorf("%s not complete after %v", name, d)
}

// readRate reads the first n bytes of p in 1 MiB reads: bytes per second.
func readRate(p string, n int64) (float64, error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	// Not io.Copy to io.Discard: its ReadFrom reads 8 KiB at a time.
	buf := make([]byte, 1<<20)
	start := time.Now()
	var got int64
	for got < n {
		k, err := f.Read(buf[:min(int64(len(buf)), n-got)])
		got += int64(k)
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, err
		}
	}
	return float64(got) / time.Since(start).Seconds(), nil
}

// randomReads is 4 KiB reads per second at random offsets in the first
// size bytes of p.
func randomReads(p string, size int64) (float64, error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 4096)
	r := rand.New(rand.NewPCG(5, 5))
	const n = 20000
	start := time.Now()
	for range n {
		if _, err := f.ReadAt(buf, r.Int64N(size/4096)*4096); err != nil {
			return 0, err
		}
	}
	return n / time.Since(start).Seconds(), nil
}

// dropCache drops these files' pages from the page cache (only theirs:
// the machine's other work keeps its cache). Dirty pages cannot be
// dropped, so each file is written back first: a checkout made just
// before was otherwise read "cold" partly from memory (3.7 GB/s from a
// disk that reads 0.2-0.9 GB/s, beside a 4 GiB view).
func dropCache(paths ...string) {
	for _, p := range paths {
		if f, err := os.Open(p); err == nil {
			unix.Fdatasync(int(f.Fd()))
			unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
			f.Close()
		}
	}
}

func filesUnder(dir string) []string {
	var out []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		switch {
		case err != nil:
		case d.IsDir() && p != dir && expose.Mounted(p):
			return filepath.SkipDir // a FUSE view: the store's bytes again, not more disk
		case d.Type().IsRegular():
			out = append(out, p)
		}
		return nil
	})
	return out
}

// diskUsed is the allocated size of the regular files under dir.
func diskUsed(dir string) int64 {
	var n int64
	for _, p := range filesUnder(dir) {
		var st syscall.Stat_t
		if syscall.Stat(p, &st) == nil {
			n += st.Blocks * 512
		}
	}
	return n
}
