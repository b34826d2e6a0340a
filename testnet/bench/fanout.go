package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/client"
)

// The fan-out benchmark runs hosts in network namespaces joined by veth
// pairs to a bridge, every host's link shaped with tc tbf in both
// directions, so they behave like hosts with NICs. The addresses belong to
// these namespaces only; nothing leaves the machine.
const (
	nsPrefix = "p2pimg-b"
	subnet   = "10.234.77."
)

func sh(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

type nsNet struct{ hosts int }

func ns(i int) string { return fmt.Sprintf("%s%d", nsPrefix, i) }

func addr(i int) string { return fmt.Sprintf("%s%d", subnet, i+1) }

// setupNS makes the bridge namespace and hosts namespaces with rate-limited links.
func setupNS(hosts int, rate string) (*nsNet, error) {
	teardownNS(hosts)
	br := nsPrefix + "br"
	steps := [][]string{
		{"ip", "netns", "add", br},
		{"ip", "-n", br, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", br, "link", "set", "br0", "up"},
	}
	for i := range hosts {
		h, a, b := ns(i), fmt.Sprintf("v%da", i), fmt.Sprintf("v%db", i)
		steps = append(steps,
			[]string{"ip", "netns", "add", h},
			[]string{"ip", "-n", h, "link", "set", "lo", "up"},
			[]string{"ip", "link", "add", a, "netns", h, "type", "veth", "peer", "name", b, "netns", br},
			[]string{"ip", "-n", h, "addr", "add", addr(i) + "/24", "dev", a},
			[]string{"ip", "-n", h, "link", "set", a, "up"},
			[]string{"ip", "-n", br, "link", "set", b, "master", "br0"},
			[]string{"ip", "-n", br, "link", "set", b, "up"},
			// upload (host side) and download (bridge side) of host i's link
			[]string{"ip", "netns", "exec", h, "tc", "qdisc", "add", "dev", a, "root", "tbf", "rate", rate, "burst", "512kb", "latency", "100ms"},
			[]string{"ip", "netns", "exec", br, "tc", "qdisc", "add", "dev", b, "root", "tbf", "rate", rate, "burst", "512kb", "latency", "100ms"},
		)
	}
	for _, s := range steps {
		if err := sh(s...); err != nil {
			teardownNS(hosts)
			return nil, err
		}
	}
	return &nsNet{hosts: hosts}, nil
}

func teardownNS(hosts int) {
	for i := range hosts {
		exec.Command("ip", "netns", "del", ns(i)).Run()
	}
	exec.Command("ip", "netns", "del", nsPrefix+"br").Run()
}

// nsDaemon starts a daemon inside host i's namespace.
type nsDaemon struct {
	cmd *exec.Cmd
	cl  *client.Client
}

func startNSDaemon(ctx context.Context, bin, data string, i int, peers []string) (*nsDaemon, error) {
	os.MkdirAll(data, 0o700)
	sock := filepath.Join(data, "p2pimg.sock")
	args := []string{"netns", "exec", ns(i), bin, "daemon", "--data", data, "--socket", sock, "--no-mdns",
		"--listen", "/ip4/" + addr(i) + "/tcp/4001", "--announce-interval", "200ms"}
	for _, p := range peers {
		args = append(args, "--peer", p)
	}
	logf, _ := os.Create(filepath.Join(data, "daemon.log"))
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d := &nsDaemon{cmd: cmd, cl: client.New(sock)}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if st, err := d.cl.Status(ctx); err == nil && st.State == "ready" {
			return d, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.stop()
	return nil, fmt.Errorf("daemon in %s did not start", ns(i))
}

func (d *nsDaemon) stop() { d.cmd.Process.Signal(os.Interrupt); d.cmd.Wait() }

func benchFanOut(ctx context.Context, t *table, bin, dir, img string, size int64, rate string, fetchers int) error {
	fmt.Fprintf(os.Stderr, "fan-out over %s links (network namespaces)\n", rate)
	if os.Geteuid() != 0 {
		t.add("fan-out 1 -> 4", "skipped: needs root for network namespaces", "", nil)
		return nil
	}
	if _, err := setupNS(fetchers+1, rate); err != nil {
		t.add("fan-out 1 -> 4", "skipped: "+err.Error(), "", nil)
		return nil
	}
	defer teardownNS(fetchers + 1)

	// p2pimg: the seed has the image; time one fetch alone, then all at once.
	round := func(n int) (time.Duration, error) {
		root := filepath.Join(dir, fmt.Sprintf("fan-%d", n))
		defer os.RemoveAll(root)
		seed, err := startNSDaemon(ctx, bin, filepath.Join(root, "seed"), 0, nil)
		if err != nil {
			return 0, err
		}
		defer seed.stop()
		id, err := seed.cl.Identity(ctx)
		if err != nil {
			return 0, err
		}
		if _, err := seed.cl.Add(ctx, api.AddRequest{Name: "ref:fan", Path: img, Chunking: "cdc"}, nil); err != nil {
			return 0, err
		}
		var ds []*nsDaemon
		for i := 1; i <= n; i++ {
			var peers []string
			peers = append(peers, "/ip4/"+addr(0)+"/tcp/4001/p2p/"+id.PeerID)
			for _, o := range ds {
				oid, _ := o.cl.Identity(ctx)
				peers = append(peers, oid.Addrs[0])
			}
			d, err := startNSDaemon(ctx, bin, filepath.Join(root, fmt.Sprintf("h%d", i)), i, peers)
			if err != nil {
				return 0, err
			}
			defer d.stop()
			ds = append(ds, d)
		}
		for _, d := range ds {
			for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				cl, _ := d.cl.Catalog(ctx)
				ps, _ := d.cl.Peers(ctx)
				if len(cl) == 1 && len(ps) == n {
					break
				}
				if time.Now().After(deadline) {
					return 0, fmt.Errorf("fan-out hosts did not connect")
				}
			}
		}
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for _, d := range ds {
			wg.Go(func() {
				if _, err := d.cl.Fetch(ctx, "ref:fan", nil); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		return time.Since(start), <-errs
	}
	one, err := round(1)
	if err != nil {
		return err
	}
	all, err := round(fetchers)
	if err != nil {
		return err
	}
	ratio := all.Seconds() / one.Seconds()

	// HTTP: one server, the same clients, the same links.
	srv := exec.Command("ip", "netns", "exec", ns(0), "python3", "-m", "http.server", "8080", "--bind", addr(0), "--directory", filepath.Dir(img))
	if err := srv.Start(); err != nil {
		return err
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	url := "http://" + addr(0) + ":8080/" + filepath.Base(img)
	for deadline := time.Now().Add(10 * time.Second); exec.Command("ip", "netns", "exec", ns(1), "curl", "-sfI", url).Run() != nil; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("http server did not start")
		}
	}
	curl := func(n int) time.Duration {
		start := time.Now()
		var wg sync.WaitGroup
		for i := 1; i <= n; i++ {
			wg.Go(func() { exec.Command("ip", "netns", "exec", ns(i), "curl", "-sf", "-o", "/dev/null", url).Run() })
		}
		wg.Wait()
		return time.Since(start)
	}
	hOne, hAll := curl(1), curl(fetchers)
	hRatio := hAll.Seconds() / hOne.Seconds()
	t.add(fmt.Sprintf("fan-out 1 -> %d over %s links: p2pimg, all / one alone", fetchers, rate),
		fmt.Sprintf("%.2f (%s / %s)", ratio, all.Round(10*time.Millisecond), one.Round(10*time.Millisecond)), "<= 1.5", check(ratio <= 1.5))
	t.add(fmt.Sprintf("  one HTTP server to %d curl clients, same links", fetchers),
		fmt.Sprintf("%.2f (%s / %s)", hRatio, hAll.Round(10*time.Millisecond), hOne.Round(10*time.Millisecond)), "", nil)
	_ = size
	return nil
}
