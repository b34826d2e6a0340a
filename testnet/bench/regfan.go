package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/crane"
	ggcrreg "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/p2pimg/p2pimg/testnet"
)

// The registry fan-out part: an upstream registry on host 0 of a set of
// network namespaces (links shaped as in the fan-out part), and 4 hosts
// that pull a multi-layer image at once, first each straight from the
// upstream, then each through its own mirror. Measured: the blob bytes the
// upstream served, and the time until all 4 had the image, against one
// host pulling it straight from the upstream alone.
const (
	regfanHosts  = 4
	regfanLayers = 8
	regfanRepo   = "bench/big:1"
)

// regfanOpts are the registry fan-out part's settings.
type regfanOpts struct {
	bin, base     string // the p2pimg binary, and one to compare it with in the same runs ("": none)
	rate, profile string
	size          int64
	runs, jobs    int // jobs: layers each client pulls at once
}

func benchRegistryFanOut(ctx context.Context, t *table, self, dir string, o regfanOpts) error {
	if os.Geteuid() != 0 {
		t.add("registry fan-out", "skipped: needs root for network namespaces", "", nil)
		return nil
	}
	fmt.Fprintf(os.Stderr, "registry fan-out: %d hosts pull a %d MiB image at once over %s links, %d layers at a time each, %d runs\n", regfanHosts, o.size>>20, o.rate, o.jobs, o.runs)
	nn := testnet.NetNS{Prefix: fmt.Sprintf("p2pimg-r%d-", os.Getpid()%100000), Subnet: "10.234.79.", Hosts: regfanHosts + 1, Rate: o.rate}
	if err := nn.Up(); err != nil {
		t.add("registry fan-out", "skipped: "+err.Error(), "", nil)
		return nil
	}
	defer nn.Down()
	root := filepath.Join(dir, "regfan")
	defer os.RemoveAll(root)
	up, err := startUpstream(ctx, nn, self, filepath.Join(root, "upstream"), o.size)
	if err != nil {
		return err
	}
	defer up.stop()
	ns := nn.Addr(0) + ":5000"
	regs := filepath.Join(root, "registries.toml")
	if err := os.WriteFile(regs, []byte(fmt.Sprintf("[registries.%q]\nendpoint = \"http://%s\"\nplain_http = true\n", ns, ns)), 0o600); err != nil {
		return err
	}
	load0 := loadAvg()
	var one, allDirect, allMirror, allBase, bytesDirect, bytesMirror []float64
	for run := range o.runs {
		trace := func(what string) string {
			if o.profile == "" {
				return ""
			}
			return filepath.Join(o.profile, fmt.Sprintf("regfan-run%d-%s", run+1, what))
		}
		alone, _, err := up.pulls(ctx, nn, self, []int{1}, "http://"+ns+"/", "", o.jobs, trace("one"))
		if err != nil {
			return fmt.Errorf("one direct pull: %w", err)
		}
		ad, bd, err := up.pulls(ctx, nn, self, []int{1, 2, 3, 4}, "http://"+ns+"/", "", o.jobs, trace("direct"))
		if err != nil {
			return fmt.Errorf("direct pulls: %w", err)
		}
		var prof *fanRound
		if o.profile != "" {
			prof = &fanRound{n: regfanHosts*100 + run, alone: alone, profile: o.profile}
		}
		mirrors := func(bin, what string) (time.Duration, int64, error) {
			return up.mirrorPulls(ctx, nn, bin, self, filepath.Join(root, fmt.Sprintf("run%d", run)), regs, ns, o.jobs, trace(what), prof)
		}
		var ab time.Duration
		if o.base != "" && run%2 == 1 { // the two binaries take turns going first
			if ab, _, err = mirrors(o.base, "base"); err != nil {
				return err
			}
		}
		am, bm, err := mirrors(o.bin, "mirror")
		if err != nil {
			return err
		}
		if o.base != "" && run%2 == 0 {
			if ab, _, err = mirrors(o.base, "base"); err != nil {
				return err
			}
		}
		fmt.Fprintf(os.Stderr, "registry fan-out run %d: one direct %s; all direct %s (%.2fx upstream); all through mirrors %s (%.2fx upstream); base binary %s; load %s\n",
			run+1, secs(alone), secs(ad), float64(bd)/float64(up.size), secs(am), float64(bm)/float64(up.size), secs(ab), loadAvg())
		one, allDirect, allMirror = append(one, alone.Seconds()), append(allDirect, ad.Seconds()/alone.Seconds()), append(allMirror, am.Seconds()/alone.Seconds())
		allBase = append(allBase, ab.Seconds()/alone.Seconds())
		bytesDirect, bytesMirror = append(bytesDirect, float64(bd)/float64(up.size)), append(bytesMirror, float64(bm)/float64(up.size))
	}
	what := fmt.Sprintf("registry fan-out, %d MiB in %d layers, %d hosts at once over %s, %d layers at a time (median of %d, load %s -> %s)", o.size>>20, regfanLayers, regfanHosts, o.rate, o.jobs, o.runs, load0, loadAvg())
	t.add(what+": one direct pull alone", fmt.Sprintf("%.1fs", median(one)), "", nil)
	t.add(what+": all pull directly: time / one; upstream bytes / image", fmt.Sprintf("%.2f; %.2fx", median(allDirect), median(bytesDirect)), "", nil)
	ratio := median(allMirror)
	t.add(what+": all pull through their mirrors: time / one direct", fmt.Sprintf("%.2f", ratio), "<= 1.5", check(ratio <= 1.5))
	if o.base != "" {
		t.add(what+": the same with "+o.base, fmt.Sprintf("%.2f", median(allBase)), "", nil)
	}
	served := median(bytesMirror)
	t.add(what+": through their mirrors: upstream bytes / image", fmt.Sprintf("%.2fx", served), "1x", check(served <= 1.1))
	return nil
}

// mirrorPulls starts a mirror on each host (fresh data under root), has
// all pull the image through their own mirror at once, and stops them.
// With prof, it takes a CPU profile of each mirror and a timeline of
// every link's bytes meanwhile (files named after prof.n, in prof.profile).
func (u *regUpstream) mirrorPulls(ctx context.Context, nn testnet.NetNS, bin, self, root, regs, ns string, jobs int, trace string, prof *fanRound) (time.Duration, int64, error) {
	defer os.RemoveAll(root)
	hosts := []int{1, 2, 3, 4}
	var ds []*nsDaemon
	defer func() {
		for _, d := range ds {
			d.stop()
		}
	}()
	for _, i := range hosts {
		var peers []string
		for _, o := range ds {
			peers = append(peers, o.id.Addrs[0])
		}
		d, err := startNSDaemon(ctx, nn, bin, filepath.Join(root, fmt.Sprintf("h%d", i)), i, peers,
			"--registry", "127.0.0.1:5000", "--registries", regs)
		if err != nil {
			return 0, 0, err
		}
		ds = append(ds, d)
	}
	for k, d := range ds {
		if err := waitPeers(ctx, d, len(ds)-1); err != nil {
			return 0, 0, fmt.Errorf("registry fan-out host %d: %w", k+1, err)
		}
	}
	if prof != nil {
		fn := &fanNet{nn: nn}
		var wg sync.WaitGroup
		defer wg.Wait()
		for _, i := range hosts {
			wg.Go(func() { fn.profile(*prof, i) })
		}
		sctx, stop := context.WithCancel(ctx)
		defer stop()
		go fn.timeline(sctx, *prof, len(hosts)+1)
	}
	took, n, err := u.pulls(ctx, nn, self, hosts, "http://127.0.0.1:5000/", ns, jobs, trace)
	if err != nil {
		return 0, 0, fmt.Errorf("pulls through the mirrors: %w", err)
	}
	var cpu float64
	for _, d := range ds {
		cpu += cpuSeconds(d.cmd.Process.Pid)
	}
	fmt.Fprintf(os.Stderr, "registry fan-out: the 4 mirrors used %.0f CPU seconds in all (start, connect, pulls)\n", cpu)
	return took, n, nil
}

// cpuSeconds is the user and system CPU time process pid has used.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]) // fields from the state on
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // clock ticks (USER_HZ)
}

// loadAvg is the one-minute load average, and the share of the last 60 s
// in which some task waited for a CPU (Linux pressure stall information)
// when the kernel reports it.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if err != nil || len(f) == 0 {
		return "?"
	}
	psi, err := os.ReadFile("/proc/pressure/cpu")
	if err != nil {
		return f[0]
	}
	for _, w := range strings.Fields(string(psi)) {
		if v, ok := strings.CutPrefix(w, "avg60="); ok {
			return f[0] + ", CPU wait " + v + "%"
		}
	}
	return f[0]
}

func waitPeers(ctx context.Context, d *nsDaemon, n int) error {
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if ps, err := d.cl.Peers(ctx); err == nil && len(ps) >= n {
			return nil
		}
	}
	return fmt.Errorf("did not connect to its %d peers", n)
}

// regUpstream is the upstream registry process in host 0's namespace.
type regUpstream struct {
	cmd    *exec.Cmd
	exited chan struct{}
	dir    string
	size   int64 // of the image's blobs
}

func startUpstream(ctx context.Context, nn testnet.NetNS, self, dir string, size int64) (*regUpstream, error) {
	os.MkdirAll(dir, 0o700)
	logf, err := os.Create(filepath.Join(dir, "upstream.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command("ip", nn.Exec(0, self, "-role", "upstream", "-dir", dir, "-size", strconv.FormatInt(size, 10))[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	u := &regUpstream{cmd: cmd, dir: dir, exited: make(chan struct{})}
	go func() { cmd.Wait(); close(u.exited) }()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.After(10 * time.Minute); ; {
		if b, err := os.ReadFile(filepath.Join(dir, "ready")); err == nil {
			u.size, err = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			return u, err
		}
		select {
		case <-tick.C:
			continue
		case <-u.exited:
		case <-deadline:
		case <-ctx.Done():
		}
		break
	}
	u.stop()
	log, _ := os.ReadFile(logf.Name())
	return nil, fmt.Errorf("the upstream registry did not start: %s", bytes.TrimSpace(log))
}

func (u *regUpstream) stop() { u.cmd.Process.Kill(); <-u.exited }

// served is the blob bytes the upstream has sent so far.
func (u *regUpstream) served() int64 {
	b, _ := os.ReadFile(filepath.Join(u.dir, "served"))
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// pulls has each host pull the image from base (with ?ns= when set) at
// once, jobs layers at a time; it returns the time until the last finished
// and the upstream's blob bytes meanwhile. With trace, each host's layer
// times go to trace-hostN.txt.
func (u *regUpstream) pulls(ctx context.Context, nn testnet.NetNS, self string, hosts []int, base, ns string, jobs int, trace string) (time.Duration, int64, error) {
	before := u.served()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, len(hosts))
	for k, i := range hosts {
		wg.Go(func() {
			args := nn.Exec(i, self, "-role", "pull", "-regfan-jobs", strconv.Itoa(jobs), base+regfanRepo, ns)
			out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
			if err != nil {
				errs[k] = fmt.Errorf("host %d: %v: %s", i, err, bytes.TrimSpace(out))
			}
			if trace != "" {
				os.WriteFile(fmt.Sprintf("%s-host%d.txt", trace, i), out, 0o644)
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	for _, err := range errs {
		if err != nil {
			return 0, 0, err
		}
	}
	time.Sleep(200 * time.Millisecond) // the upstream writes its count after each response
	return took, u.served() - before, nil
}

// serveUpstream is the -role upstream process: a registry on :5000
// holding a random image of size bytes in regfanLayers layers (blobs on
// disk in dir), counting the blob bytes it serves into dir/served; it
// writes dir/ready (the image's blob bytes) once the image is pushed.
func serveUpstream(dir string, size int64) error {
	var served atomic.Int64
	if err := os.MkdirAll(filepath.Join(dir, "blobs"), 0o700); err != nil {
		return err
	}
	reg := ggcrreg.New(ggcrreg.Logger(log.New(io.Discard, "", 0)), ggcrreg.WithBlobHandler(ggcrreg.NewDiskBlobHandler(filepath.Join(dir, "blobs"))))
	count := func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
			reg.ServeHTTP(w, r)
			return
		}
		cw := &countingWriter{ResponseWriter: w}
		reg.ServeHTTP(cw, r)
		n := served.Add(cw.n)
		os.WriteFile(filepath.Join(dir, "served.tmp"), []byte(strconv.FormatInt(n, 10)), 0o600)
		os.Rename(filepath.Join(dir, "served.tmp"), filepath.Join(dir, "served"))
	}
	ln, err := net.Listen("tcp", ":5000")
	if err != nil {
		return err
	}
	go http.Serve(ln, http.HandlerFunc(count))
	img := empty.Image
	for range regfanLayers {
		l, err := random.Layer(size/regfanLayers, "application/vnd.oci.image.layer.v1.tar")
		if err != nil {
			return err
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			return err
		}
	}
	if err := crane.Push(img, "127.0.0.1:5000/"+regfanRepo, crane.Insecure); err != nil {
		return err
	}
	total, err := blobBytes(img)
	if err != nil {
		return err
	}
	served.Store(0)
	os.Remove(filepath.Join(dir, "served"))
	if err := os.WriteFile(filepath.Join(dir, "ready"), []byte(strconv.FormatInt(total, 10)), 0o600); err != nil {
		return err
	}
	select {}
}

// blobBytes is the size of an image's config and layers.
func blobBytes(img v1.Image) (int64, error) {
	m, err := img.Manifest()
	if err != nil {
		return 0, err
	}
	n := m.Config.Size
	for _, l := range m.Layers {
		n += l.Size
	}
	return n, nil
}

type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n += int64(n)
	return n, err
}

// pullRole is the -role pull process: it pulls ref (adding ?ns=NS to
// every request when given, as containerd does for a mirror) and reads
// every blob, jobs at a time, each checked against its digest; it prints
// each layer's times.
func pullRole(args []string, jobs int) error {
	if len(args) < 1 {
		return fmt.Errorf("-role pull REF [NS]")
	}
	ref, ns := args[0], ""
	if len(args) > 1 {
		ns = args[1]
	}
	ref = strings.TrimPrefix(ref, "http://")
	var rt http.RoundTripper = http.DefaultTransport
	if ns != "" {
		rt = addNS{ns: ns, rt: rt}
	}
	return pullImage(ref, rt, jobs, os.Stdout)
}

// addNS adds ?ns= to every request, as containerd does for a mirror.
type addNS struct {
	ns string
	rt http.RoundTripper
}

func (a addNS) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	q := r.URL.Query()
	q.Set("ns", a.ns)
	r.URL.RawQuery = q.Encode()
	return a.rt.RoundTrip(r)
}
