package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/client"
	"github.com/p2pimg/p2pimg/testnet"
)

// nsDaemon is a daemon inside host i's namespace.
type nsDaemon struct {
	cmd *exec.Cmd
	cl  *client.Client
	id  api.Identity
}

// startNSDaemon starts a daemon in host i's namespace, with extra
// arguments appended to its own.
func startNSDaemon(ctx context.Context, nn testnet.NetNS, bin, data string, i int, peers []string, extra ...string) (*nsDaemon, error) {
	os.MkdirAll(data, 0o700)
	sock := filepath.Join(data, "p2pimg.sock")
	args := []string{"netns", "exec", nn.NS(i), bin, "daemon", "--data", data, "--socket", sock, "--no-mdns", "--open",
		"--listen", "/ip4/" + nn.Addr(i) + "/tcp/4001", "--announce-interval", "200ms",
		"--metrics", nn.Addr(i) + ":9100", "--pprof"} // pprof for -fanout-profile
	for _, p := range peers {
		args = append(args, "--peer", p)
	}
	args = append(args, extra...)
	logf, _ := os.Create(filepath.Join(data, "daemon.log"))
	cmd := exec.Command("ip", args...) // ip execs the daemon: the pid is the daemon's
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d := &nsDaemon{cmd: cmd, cl: client.New(sock)}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if st, err := d.cl.Status(ctx); err == nil && st.State == "ready" {
			if d.id, err = d.cl.Identity(ctx); err == nil {
				return d, nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.stop()
	return nil, fmt.Errorf("daemon in %s did not start", nn.NS(i))
}

func (d *nsDaemon) stop() { d.cmd.Process.Signal(os.Interrupt); d.cmd.Wait() }

func (d *nsDaemon) kill() { d.cmd.Process.Signal(syscall.SIGKILL); d.cmd.Wait() }

// cpu is the daemon's user+system CPU time so far (/proc/PID/stat).
func (d *nsDaemon) cpu() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", d.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // fields from 3 on
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// served is the chunk bytes this daemon has sent to its peers.
func (d *nsDaemon) served(ctx context.Context) int64 {
	ps, _ := d.cl.Peers(ctx)
	var n int64
	for _, p := range ps {
		n += p.BytesOut
	}
	return n
}

// fanRound is one fan-out: n fetchers start together (join more start
// their daemons and fetch at half of alone, the one-fetch time), and kill
// of them are killed with SIGKILL at half of alone.
type fanRound struct {
	n, join, kill int
	alone         time.Duration
	profile       string // a directory for CPU profiles of the seed and host 1
}

// fanResult is what a round measured.
type fanResult struct {
	all      time.Duration   // start until the last surviving host finished
	finish   []time.Duration // the surviving starters' finish times
	joined   []time.Duration // the joiners' finish times, from their start
	seedUp   float64         // the seed's upload / image size
	cpuPerGB float64         // every daemon's CPU seconds per GiB delivered
}

// fanNet is the fan-out part's namespaces and image.
type fanNet struct {
	nn       testnet.NetNS
	bin, dir string
	img      string
}

func (fn *fanNet) round(ctx context.Context, r fanRound) (res fanResult, err error) {
	root := filepath.Join(fn.dir, fmt.Sprintf("fan-%d", r.n))
	defer os.RemoveAll(root)
	var all []*nsDaemon
	defer func() {
		for i, d := range all {
			d.stop()
			if r.profile != "" { // the logs beside the profiles
				b, _ := os.ReadFile(filepath.Join(root, fmt.Sprintf("h%d", i), "daemon.log"))
				os.WriteFile(filepath.Join(r.profile, fmt.Sprintf("fan-%s-n%d-host%d.log", fn.nn.Rate, r.n, i)), b, 0o644)
			}
		}
	}()
	start := func(i int) (*nsDaemon, error) {
		var peers []string
		for _, o := range all {
			peers = append(peers, o.id.Addrs[0])
		}
		d, err := startNSDaemon(ctx, fn.nn, fn.bin, filepath.Join(root, fmt.Sprintf("h%d", i)), i, peers)
		if err == nil {
			all = append(all, d)
		}
		return d, err
	}
	seed, err := start(0)
	if err != nil {
		return res, err
	}
	added, err := seed.cl.Add(ctx, api.AddRequest{Name: "ref:fan", Path: fn.img, Chunking: "cdc"}, nil)
	if err != nil {
		return res, err
	}
	// ready: the host has the layer in its catalogue (the seed's mapping,
	// the seed holding it) and is connected to the others.
	ready := func(d *nsDaemon, i, others int) error {
		if err := waitLayer(ctx, d.cl, "ref:fan", added.Layer.CID, seed.id.PeerID); err != nil {
			return fmt.Errorf("fan-out host %d: %w", i, err)
		}
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if ps, err := d.cl.Peers(ctx); err == nil && len(ps) >= others {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("fan-out host %d did not connect to the %d others", i, others)
			}
		}
	}
	var ds []*nsDaemon
	for i := 1; i <= r.n; i++ {
		d, err := start(i)
		if err != nil {
			return res, err
		}
		ds = append(ds, d)
	}
	for i, d := range ds {
		if err := ready(d, i+1, r.n); err != nil {
			return res, err
		}
	}
	var cpu0 time.Duration
	for _, d := range all {
		cpu0 += d.cpu()
	}
	began := time.Now()
	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	fetch := func(d *nsDaemon, from time.Time, into *[]time.Duration, mayFail bool) {
		wg.Go(func() {
			_, err := d.cl.Fetch(ctx, "ref:fan", nil)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				*into = append(*into, time.Since(from))
			case !mayFail:
				errs = append(errs, err)
			}
		})
	}
	killed := ds[len(ds)-r.kill:]
	for k, d := range ds {
		fetch(d, began, &res.finish, k >= len(ds)-r.kill)
	}
	if r.profile != "" {
		for _, i := range []int{0, 1} {
			wg.Go(func() { fn.profile(r, i) })
		}
		sctx, stop := context.WithCancel(ctx)
		defer stop()
		go fn.timeline(sctx, r, len(all))
	}
	if r.join > 0 || r.kill > 0 {
		time.Sleep(r.alone / 2)
	}
	for _, d := range killed {
		d.kill()
	}
	for j := range r.join {
		i := r.n + 1 + j
		d, err := start(i)
		if err == nil {
			err = ready(d, i, r.n+j-r.kill)
		}
		if err != nil {
			wg.Wait()
			return res, err
		}
		fetch(d, time.Now(), &res.joined, false)
	}
	wg.Wait()
	res.all = time.Since(began)
	if r.profile != "" {
		for _, i := range []int{0, 1} {
			fn.metrics(r, i)
		}
	}
	if len(errs) > 0 {
		return res, errs[0]
	}
	var cpu1 time.Duration
	for _, d := range all {
		cpu1 += d.cpu()
	}
	live := r.n - r.kill + r.join
	res.seedUp = float64(seed.served(ctx)) / float64(added.Layer.Size)
	res.cpuPerGB = (cpu1 - cpu0).Seconds() / (float64(live) * float64(added.Layer.Size) / (1 << 30))
	return res, nil
}

// profile takes a CPU profile of host i for most of a fetch alone's time.
func (fn *fanNet) profile(r fanRound, i int) {
	secs := max(1, int(r.alone.Seconds()*0.8))
	out := filepath.Join(r.profile, fmt.Sprintf("fan-%s-n%d-host%d.pprof", fn.nn.Rate, r.n, i))
	url := fmt.Sprintf("http://%s:9100/debug/pprof/profile?seconds=%d", fn.nn.Addr(i), secs)
	if b, err := exec.Command("ip", "netns", "exec", fn.nn.NS(i), "curl", "-sSf", "-o", out, url).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "  profile of host %d: %v: %s\n", i, err, b)
	}
}

// metrics saves host i's metrics after a fan-out, beside its profile.
func (fn *fanNet) metrics(r fanRound, i int) {
	out := filepath.Join(r.profile, fmt.Sprintf("fan-%s-n%d-host%d.metrics", fn.nn.Rate, r.n, i))
	url := fmt.Sprintf("http://%s:9100/metrics", fn.nn.Addr(i))
	exec.Command("ip", "netns", "exec", fn.nn.NS(i), "curl", "-sSf", "-o", out, url).Run()
}

// pct is the p-th percentile (nearest rank) of ds.
func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	ds = slices.Clone(ds)
	slices.Sort(ds)
	k := int(p/100*float64(len(ds))+0.999) - 1
	return ds[max(0, min(k, len(ds)-1))]
}

func secs(d time.Duration) string { return fmt.Sprintf("%.1fs", d.Seconds()) }

// fanOpts is what the fan-out part runs: per link rate, the fetcher counts.
type fanOpts struct {
	rates   []fanRate
	churn   int    // fetchers in the kill and join rows (0: none)
	profile string // directory for CPU profiles and link timelines (empty: none)
	http    bool   // the one-HTTP-server-to-N-curl row
}

type fanRate struct {
	rate string
	ns   []int
}

// benchFanOut runs the fan-out rows: per link rate, one fetch alone, then
// each N at once; the kill and join rows at the first rate; and beside
// them one HTTP server to 4 curl clients on the same links.
func benchFanOut(ctx context.Context, t *table, bin, dir, img string, o fanOpts) error {
	if os.Geteuid() != 0 {
		t.add("fan-out", "skipped: needs root for network namespaces", "", nil)
		return nil
	}
	for k, fr := range o.rates {
		hosts := slices.Max(fr.ns) + 1
		if k == 0 && o.churn > 0 {
			hosts = max(hosts, o.churn+5)
		}
		fmt.Fprintf(os.Stderr, "fan-out over %s links (network namespaces, %d hosts)\n", fr.rate, hosts)
		// The hosts run in network namespaces with every link shaped like a NIC.
		// The pid in the names keeps two benches on one machine apart.
		prefix := fmt.Sprintf("p2pimg-b%d-", os.Getpid()%100000)
		fn := &fanNet{nn: testnet.NetNS{Prefix: prefix, Subnet: "10.234.77.", Hosts: hosts, Rate: fr.rate}, bin: bin, dir: dir, img: img}
		if err := fn.nn.Up(); err != nil {
			t.add("fan-out", "skipped: "+err.Error(), "", nil)
			return nil
		}
		err := fn.rows(ctx, t, fr, k == 0, o)
		fn.nn.Down()
		if err != nil {
			return err
		}
	}
	return nil
}

func (fn *fanNet) rows(ctx context.Context, t *table, fr fanRate, first bool, o fanOpts) error {
	one, err := fn.round(ctx, fanRound{n: 1})
	if err != nil {
		return err
	}
	t.add(fmt.Sprintf("fan-out over %s links: one fetch alone", fr.rate),
		fmt.Sprintf("%s, %.1f CPU s/GiB (seed and fetcher)", secs(one.all), one.cpuPerGB), "", nil)
	for _, n := range fr.ns {
		res, err := fn.round(ctx, fanRound{n: n, alone: one.all, profile: o.profile})
		if err != nil {
			return err
		}
		ratio := res.all.Seconds() / one.all.Seconds()
		p50, p99 := pct(res.finish, 50), pct(res.finish, 99)
		cpu := res.cpuPerGB / one.cpuPerGB
		target, ok := "", (*bool)(nil)
		switch {
		case n >= 16:
			target = "<= 1.25; p99 <= 1.3 p50; seed <= 1.5; CPU <= 2x"
			ok = check(ratio <= 1.25 && p99.Seconds() <= 1.3*p50.Seconds() && res.seedUp <= 1.5 && cpu <= 2)
		case n == 4:
			target, ok = "<= 1.15", check(ratio <= 1.15)
		}
		t.add(fmt.Sprintf("fan-out 1 -> %d over %s: all / one; p50, p99; seed up / image; CPU s/GiB (/ one)", n, fr.rate),
			fmt.Sprintf("%.2f (%s); %s, %s; %.2fx; %.1f (%.1fx)", ratio, secs(res.all), secs(p50), secs(p99), res.seedUp, res.cpuPerGB, cpu),
			target, ok)
	}
	if first && o.churn > 0 {
		n := o.churn
		res, err := fn.round(ctx, fanRound{n: n, kill: 1, alone: one.all})
		if err != nil {
			return err
		}
		t.add(fmt.Sprintf("fan-out 1 -> %d over %s, one killed halfway: the others' p50, p99 / one", n, fr.rate),
			fmt.Sprintf("%.2f, %.2f (%s, %s)", pct(res.finish, 50).Seconds()/one.all.Seconds(), pct(res.finish, 99).Seconds()/one.all.Seconds(),
				secs(pct(res.finish, 50)), secs(pct(res.finish, 99))), "", nil)
		res, err = fn.round(ctx, fanRound{n: n, join: 4, alone: one.all})
		if err != nil {
			return err
		}
		t.add(fmt.Sprintf("fan-out 1 -> %d over %s, 4 more join halfway: starters' p50, p99; joiners' p50, p99 (from their start) / one", n, fr.rate),
			fmt.Sprintf("%.2f, %.2f; %.2f, %.2f", pct(res.finish, 50).Seconds()/one.all.Seconds(), pct(res.finish, 99).Seconds()/one.all.Seconds(),
				pct(res.joined, 50).Seconds()/one.all.Seconds(), pct(res.joined, 99).Seconds()/one.all.Seconds()), "", nil)
	}
	if !o.http {
		return nil
	}
	return fn.http(t, fr.rate, min(4, slices.Max(fr.ns)))
}

// http times one HTTP server sending the image to n curl clients at once,
// against one alone, on the same links.
func (fn *fanNet) http(t *table, rate string, n int) error {
	nn, img := fn.nn, fn.img
	httpRow := fmt.Sprintf("  one HTTP server to %d curl clients over %s, all / one", n, rate)
	for _, tool := range []string{"python3", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.add(httpRow, "skipped: no "+tool, "", nil)
			return nil
		}
	}
	srv := exec.Command("ip", "netns", "exec", nn.NS(0), "python3", "-m", "http.server", "8080", "--bind", nn.Addr(0), "--directory", filepath.Dir(img))
	if err := srv.Start(); err != nil {
		return err
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	url := "http://" + nn.Addr(0) + ":8080/" + filepath.Base(img)
	for deadline := time.Now().Add(10 * time.Second); exec.Command("ip", "netns", "exec", nn.NS(1), "curl", "-sfI", url).Run() != nil; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("http server did not start")
		}
	}
	curl := func(n int) (time.Duration, error) {
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := 1; i <= n; i++ {
			wg.Go(func() {
				if out, err := exec.Command("ip", "netns", "exec", nn.NS(i), "curl", "-sSf", "-o", "/dev/null", url).CombinedOutput(); err != nil {
					errs <- fmt.Errorf("curl in %s: %v: %s", nn.NS(i), err, out)
				}
			})
		}
		wg.Wait()
		close(errs)
		return time.Since(start), <-errs
	}
	hOne, err := curl(1)
	if err != nil {
		return err
	}
	hAll, err := curl(n)
	if err != nil {
		return err
	}
	t.add(httpRow, fmt.Sprintf("%.2f (%s / %s)", hAll.Seconds()/hOne.Seconds(), secs(hAll), secs(hOne)), "", nil)
	return nil
}

// parseFanOut reads -fanout: RATE:N,N;RATE:N...
func parseFanOut(spec string) (fanOpts, error) {
	var o fanOpts
	for _, part := range strings.Split(spec, ";") {
		rate, ns, ok := strings.Cut(part, ":")
		if !ok {
			return o, fmt.Errorf("-fanout %q: want RATE:N,N;RATE:N (e.g. 50mbit:4,8,16;400mbit:4)", spec)
		}
		fr := fanRate{rate: rate}
		for _, x := range strings.Split(ns, ",") {
			n, err := strconv.Atoi(x)
			if err != nil || n < 1 {
				return o, fmt.Errorf("-fanout %q: fetcher count %q", spec, x)
			}
			fr.ns = append(fr.ns, n)
		}
		o.rates = append(o.rates, fr)
	}
	return o, nil
}

// timeline writes, every half second until ctx ends, each of the first
// hosts' upload and download in Mbit/s (from the bridge side of their
// links: one command reads them all), so a reader sees whether links sit
// idle at the start, in the middle or at the end of a fan-out.
func (fn *fanNet) timeline(ctx context.Context, r fanRound, hosts int) {
	out := filepath.Join(r.profile, fmt.Sprintf("fan-%s-n%d-links.tsv", fn.nn.Rate, r.n))
	f, err := os.Create(out)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "# seconds, then per host (0 is the seed) up/down Mbit/s\n")
	type ctr struct{ up, down int64 }
	read := func() map[int]ctr {
		b, err := exec.Command("ip", "-n", fn.nn.Prefix+"br", "-s", "-j", "link", "show").Output()
		if err != nil {
			return nil
		}
		var links []struct {
			Name  string `json:"ifname"`
			Stats struct {
				RX struct{ Bytes int64 } `json:"rx"`
				TX struct{ Bytes int64 } `json:"tx"`
			} `json:"stats64"`
		}
		json.Unmarshal(b, &links)
		m := map[int]ctr{}
		for _, l := range links {
			var i int
			if _, err := fmt.Sscanf(l.Name, "v%db", &i); err == nil { // the bridge receives what host i uploads
				m[i] = ctr{up: l.Stats.RX.Bytes, down: l.Stats.TX.Bytes}
			}
		}
		return m
	}
	began, prev, at := time.Now(), read(), time.Now()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		cur, now := read(), time.Now()
		dt := now.Sub(at).Seconds()
		fmt.Fprintf(f, "%.1f", now.Sub(began).Seconds())
		for i := range hosts {
			fmt.Fprintf(f, "\t%.0f/%.0f", float64(cur[i].up-prev[i].up)*8/1e6/dt, float64(cur[i].down-prev[i].down)*8/1e6/dt)
		}
		fmt.Fprintln(f)
		prev, at = cur, now
	}
}
