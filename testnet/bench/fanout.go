package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/client"
	"github.com/p2pimg/p2pimg/testnet"
)

// nsDaemon starts a daemon inside host i's namespace.
type nsDaemon struct {
	cmd *exec.Cmd
	cl  *client.Client
}

func startNSDaemon(ctx context.Context, nn testnet.NetNS, bin, data string, i int, peers []string) (*nsDaemon, error) {
	os.MkdirAll(data, 0o700)
	sock := filepath.Join(data, "p2pimg.sock")
	args := []string{"netns", "exec", nn.NS(i), bin, "daemon", "--data", data, "--socket", sock, "--no-mdns",
		"--listen", "/ip4/" + nn.Addr(i) + "/tcp/4001", "--announce-interval", "200ms"}
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
	return nil, fmt.Errorf("daemon in %s did not start", nn.NS(i))
}

func (d *nsDaemon) stop() { d.cmd.Process.Signal(os.Interrupt); d.cmd.Wait() }

func benchFanOut(ctx context.Context, t *table, bin, dir, img string, rate string, fetchers int) error {
	fmt.Fprintf(os.Stderr, "fan-out over %s links (network namespaces)\n", rate)
	if os.Geteuid() != 0 {
		t.add("fan-out 1 -> 4", "skipped: needs root for network namespaces", "", nil)
		return nil
	}
	// The hosts run in network namespaces with every link shaped like a NIC.
	nn := testnet.NetNS{Prefix: "p2pimg-b", Subnet: "10.234.77.", Hosts: fetchers + 1, Rate: rate}
	if err := nn.Up(); err != nil {
		t.add("fan-out 1 -> 4", "skipped: "+err.Error(), "", nil)
		return nil
	}
	defer nn.Down()

	// p2pimg: the seed has the image; time one fetch alone, then all at once.
	round := func(n int) (time.Duration, error) {
		root := filepath.Join(dir, fmt.Sprintf("fan-%d", n))
		defer os.RemoveAll(root)
		seed, err := startNSDaemon(ctx, nn, bin, filepath.Join(root, "seed"), 0, nil)
		if err != nil {
			return 0, err
		}
		defer seed.stop()
		id, err := seed.cl.Identity(ctx)
		if err != nil {
			return 0, err
		}
		added, err := seed.cl.Add(ctx, api.AddRequest{Name: "ref:fan", Path: img, Chunking: "cdc"}, nil)
		if err != nil {
			return 0, err
		}
		var ds []*nsDaemon
		for i := 1; i <= n; i++ {
			var peers []string
			peers = append(peers, "/ip4/"+nn.Addr(0)+"/tcp/4001/p2p/"+id.PeerID)
			for _, o := range ds {
				oid, _ := o.cl.Identity(ctx)
				peers = append(peers, oid.Addrs[0])
			}
			d, err := startNSDaemon(ctx, nn, bin, filepath.Join(root, fmt.Sprintf("h%d", i)), i, peers)
			if err != nil {
				return 0, err
			}
			defer d.stop()
			ds = append(ds, d)
		}
		// Every fetcher has the layer itself in its catalogue (the seed's
		// mapping, the seed holding it) and is connected to all n others.
		for i, d := range ds {
			if err := waitLayer(ctx, d.cl, "ref:fan", added.Layer.CID, id.PeerID); err != nil {
				return 0, fmt.Errorf("fan-out host %d: %w", i+1, err)
			}
			for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				if ps, err := d.cl.Peers(ctx); err == nil && len(ps) >= n {
					break
				}
				if time.Now().After(deadline) {
					return 0, fmt.Errorf("fan-out host %d did not connect to the %d others", i+1, n)
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

	t.add(fmt.Sprintf("fan-out 1 -> %d over %s links: p2pimg, all / one alone", fetchers, rate),
		fmt.Sprintf("%.2f (%s / %s)", ratio, all.Round(10*time.Millisecond), one.Round(10*time.Millisecond)), "<= 1.5", check(ratio <= 1.5))

	// HTTP: one server, the same clients, the same links.
	httpRow := fmt.Sprintf("  one HTTP server to %d curl clients, same links", fetchers)
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
	hAll, err := curl(fetchers)
	if err != nil {
		return err
	}
	hRatio := hAll.Seconds() / hOne.Seconds()
	t.add(httpRow, fmt.Sprintf("%.2f (%s / %s)", hRatio, hAll.Round(10*time.Millisecond), hOne.Round(10*time.Millisecond)), "", nil)
	return nil
}
