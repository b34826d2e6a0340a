package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/testnet"
)

const streamProto = "/p2pimg-bench/stream/1"

// serveRole runs this binary as a sender for the ceiling measurements:
// "libp2p" (one TLS-secured stream, as the daemons use) or "tcp" (plain).
// It prints its address and sends size bytes to each connection.
func serveRole(role string, size int64) error {
	buf := make([]byte, 1<<20)
	rand.Read(buf)
	send := func(w io.Writer) {
		for left := size; left > 0; {
			n := min(left, int64(len(buf)))
			if _, err := w.Write(buf[:n]); err != nil {
				return
			}
			left -= n
		}
	}
	switch role {
	case "libp2p":
		h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
			libp2p.Security(libp2ptls.ID, libp2ptls.New), libp2p.Transport(tcp.NewTCPTransport), libp2p.DisableRelay())
		if err != nil {
			return err
		}
		h.SetStreamHandler(streamProto, func(s network.Stream) { send(s); s.Close() })
		fmt.Printf("%s/p2p/%s\n", h.Addrs()[0], h.ID())
	case "tcp":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { send(c); c.Close() }()
			}
		}()
		fmt.Println(ln.Addr().String())
	default:
		return fmt.Errorf("unknown role %q", role)
	}
	select {} // until killed
}

// sender starts this binary in a role and returns its address and process id.
func sender(role string, size int64) (string, int, func(), error) {
	self, err := os.Executable()
	if err != nil {
		return "", 0, nil, err
	}
	cmd := exec.Command(self, "-role", role, "-size", strconv.FormatInt(size, 10))
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return "", 0, nil, err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	stop := func() { cmd.Process.Kill(); cmd.Wait() }
	if err != nil {
		stop()
		return "", 0, nil, fmt.Errorf("%s sender: %w", role, err)
	}
	return strings.TrimSpace(line), cmd.Process.Pid, stop, nil
}

func bareLibp2p(ctx context.Context, addr string) (int64, error) {
	h, err := libp2p.New(libp2p.NoListenAddrs, libp2p.Security(libp2ptls.ID, libp2ptls.New), libp2p.Transport(tcp.NewTCPTransport))
	if err != nil {
		return 0, err
	}
	defer h.Close()
	a, _ := ma.NewMultiaddr(addr)
	ai, _ := peer.AddrInfoFromP2pAddr(a)
	if err := h.Connect(ctx, *ai); err != nil {
		return 0, err
	}
	s, err := h.NewStream(ctx, ai.ID, streamProto)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	return io.CopyBuffer(io.Discard, s, make([]byte, 1<<20))
}

func rawTCP(addr string) (int64, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return io.CopyBuffer(io.Discard, c, make([]byte, 1<<20))
}

// rsyncd runs an rsync daemon on loopback serving dir as module "img".
func rsyncd(dir, work string) (string, func(), error) {
	if _, err := exec.LookPath("rsync"); err != nil {
		return "", nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	conf := filepath.Join(work, "rsyncd.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf("use chroot = no\nuid = root\ngid = root\n[img]\npath = %s\nread only = yes\n", dir)), 0o600)
	cmd := exec.Command("rsync", "--daemon", "--no-detach", "--address", "127.0.0.1", "--port", strconv.Itoa(port), "--config", conf)
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() { cmd.Process.Kill(); cmd.Wait() }
	url := fmt.Sprintf("rsync://127.0.0.1:%d/img/", port)
	for range 100 { // wait until it answers
		if exec.Command("rsync", url).Run() == nil {
			return url, stop, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	return "", nil, fmt.Errorf("rsync daemon did not start")
}

var receivedRE = regexp.MustCompile(`Total bytes received: ([\d,]+)`)

// rsyncPull copies url+name to dest (with extra rsync flags) and returns the bytes received.
func rsyncPull(url, name, dest string, flags ...string) (int64, time.Duration, error) {
	start := time.Now()
	out, err := exec.Command("rsync", append([]string{"--stats", "--inplace"}, append(flags, url+name, dest)...)...).CombinedOutput()
	el := time.Since(start)
	if err != nil {
		return 0, 0, fmt.Errorf("rsync: %v: %s", err, out)
	}
	m := receivedRE.FindSubmatch(out)
	if m == nil {
		return 0, 0, fmt.Errorf("rsync printed no byte count: %s", out)
	}
	n, _ := strconv.ParseInt(strings.ReplaceAll(string(m[1]), ",", ""), 10, 64)
	return n, el, nil
}

// startPeer starts a daemon peered with a and returns once its catalogue
// maps name to cid with a holding it: the layer it is started to fetch.
func startPeer(ctx context.Context, bin, data string, a *testnet.Daemon, name, cid string) (*testnet.Daemon, error) {
	id, err := a.Client.Identity(ctx)
	if err != nil {
		return nil, err
	}
	b, err := testnet.StartDaemon(ctx, bin, data, "--peer", id.Addrs[0], "--announce-interval", "200ms")
	if err != nil {
		return nil, err
	}
	if err := waitLayer(ctx, b.Client, name, cid, id.PeerID); err != nil {
		b.Stop()
		return nil, fmt.Errorf("peer: %w", err)
	}
	return b, nil
}

func benchFetch(ctx context.Context, t *table, bin, dir, base, clustered string, size int64, runs int) error {
	fmt.Fprintln(os.Stderr, "fetch between two daemons, and its ceilings, interleaved round by round")
	a, err := testnet.StartDaemon(ctx, bin, filepath.Join(dir, "seed"), "--announce-interval", "200ms")
	if err != nil {
		return err
	}
	defer a.Stop()
	// The CID each layer name stands for: a peer waits for that mapping.
	cids := map[string]string{}
	v1, err := a.Client.Add(ctx, api.AddRequest{Name: "ref:base", Path: base, Chunking: "cdc"}, nil)
	if err != nil {
		return err
	}
	cids["ref:base"] = v1.Layer.CID
	// The same image with the design's optional chunk hash, for comparison:
	// verifying every chunk is the fetcher's largest cost.
	b3res, err := a.Client.Add(ctx, api.AddRequest{Name: "ref:blake3", Path: base, Chunking: "cdc", Hash: "blake3"}, nil)
	if err != nil {
		return err
	}
	cids["ref:blake3"] = b3res.Layer.CID
	lp, lpPid, stopLP, err := sender("libp2p", size)
	if err != nil {
		return err
	}
	defer stopLP()
	tcpAddr, _, stopTCP, err := sender("tcp", size)
	if err != nil {
		return err
	}
	defer stopTCP()
	url, stopRsync, rerr := rsyncd(filepath.Dir(base), dir)
	if rerr == nil {
		defer stopRsync()
	}
	timed := func(fn func() error) (float64, error) {
		start := time.Now()
		if err := fn(); err != nil {
			return 0, err
		}
		return float64(size) / time.Since(start).Seconds() / 1e6, nil
	}
	// One round runs each transfer once, back to back, so the machine's
	// noise falls on all of them alike; the table gives medians, and the
	// median of the rounds' ratios.
	// CPU seconds per GiB of the image, of both ends of a transfer: when
	// the machine's cores are busy with other work, a transfer gets its
	// share of CPU time, and the fetch's share of the bare stream's rate
	// falls towards the ratio of their CPU costs.
	perGiB := func(cpu float64) float64 { return cpu / (float64(size) / (1 << 30)) }
	fetch := func(name string) (rate, cpu float64, res api.FetchResult, err error) {
		data := filepath.Join(dir, "peer")
		b, err := startPeer(ctx, bin, data, a, name, cids[name])
		if err != nil {
			return 0, 0, res, err
		}
		defer func() { b.Stop(); os.RemoveAll(data) }()
		a0, b0 := cpuSeconds(a.Pid()), cpuSeconds(b.Pid())
		rate, err = timed(func() (err error) { res, err = b.Client.Fetch(ctx, name, nil); return })
		cpu = perGiB(cpuSeconds(a.Pid()) - a0 + cpuSeconds(b.Pid()) - b0)
		return rate, cpu, res, err
	}
	// A first fetch, not counted, takes what happens once per machine and
	// run: the receiver's page cache growing into memory this machine has
	// not used yet (on a VM the host backs such pages on first touch, which
	// measured several times slower than reused ones) and the seed's first
	// reads of its packs.
	// It is also what a user sees first: the cold row, beside a plain
	// write+fsync of the same bytes right after it.
	cold, _, _, err := fetch("ref:base")
	if err != nil {
		return err
	}
	plain, err := timed(func() error { return writeSynced(base, filepath.Join(dir, "plain-write")) })
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "  first fetch between fresh daemons %.0f MB/s, plain write+fsync %.0f MB/s\n", cold, plain)
	var fetchRates, commits, b3s, bares, raws, rsyncs, rsyncSyncs, ofBare, b3OfBare, ofRsync, fetchCPU, bareCPU []float64
	for i := range runs {
		// The two fetches take turns going first, so neither gains from its
		// place in the round (on this VM the order of write-heavy transfers
		// changes their speed).
		var f, fcpu, b3 float64
		var res api.FetchResult
		for k := range 2 {
			if (i+k)%2 == 0 {
				f, fcpu, res, err = fetch("ref:base")
			} else {
				b3, _, _, err = fetch("ref:blake3")
			}
			if err != nil {
				return err
			}
		}
		s0, r0 := cpuSeconds(lpPid), cpuSeconds(os.Getpid()) // the receiving end runs in this process
		bare, err := timed(func() error { _, err := bareLibp2p(ctx, lp); return err })
		if err != nil {
			return err
		}
		bcpu := perGiB(cpuSeconds(lpPid) - s0 + cpuSeconds(os.Getpid()) - r0)
		fetchCPU, bareCPU = append(fetchCPU, fcpu), append(bareCPU, bcpu)
		raw, err := timed(func() error { _, err := rawTCP(tcpAddr); return err })
		if err != nil {
			return err
		}
		fetchRates, commits, bares, raws = append(fetchRates, f), append(commits, res.CommitSeconds), append(bares, bare), append(raws, raw)
		ofBare, b3s, b3OfBare = append(ofBare, f/bare), append(b3s, b3), append(b3OfBare, b3/bare)
		line := fmt.Sprintf("  round %d: fetch %.0f MB/s (blake3 %.0f), bare libp2p %.0f, raw TCP %.0f; CPU s/GiB fetch %.2f, bare %.2f; load %s", i+1, f, b3, bare, raw, fcpu, bcpu, loadAvg())
		if rerr == nil {
			var rs [2]float64
			for k, flags := range [][]string{nil, {"--fsync"}} {
				dest := filepath.Join(dir, "rsync-full")
				rs[k], err = timed(func() error { _, _, err := rsyncPull(url, filepath.Base(base), dest, flags...); return err })
				os.Remove(dest)
				if err != nil {
					return err
				}
			}
			rsyncs, rsyncSyncs, ofRsync = append(rsyncs, rs[0]), append(rsyncSyncs, rs[1]), append(ofRsync, f/rs[0])
			line += fmt.Sprintf(", rsync %.0f, rsync --fsync %.0f", rs[0], rs[1])
		}
		fmt.Fprintln(os.Stderr, line)
	}
	fetchRate, bare, ratio := median(fetchRates), median(bares), median(ofBare)
	t.add("fetch 1 image A->B, two daemon processes", fmt.Sprintf("%.0f MB/s = %.0f%% of bare libp2p", fetchRate, 100*ratio), ">= 70% of bare libp2p", check(ratio >= 0.7))
	slower := min(bare, plain)
	t.add("  first fetch, fresh daemons and image, no warm-up; beside a plain write+fsync of the same bytes",
		fmt.Sprintf("%.0f MB/s = %.2fx the slower of bare libp2p (%.0f) and the write (%.0f MB/s)", cold, cold/slower, bare, plain),
		">= 0.9x the slower", check(cold >= 0.9*slower))
	t.add("  of which the durable commit (fsync of the new chunks)", fmt.Sprintf("%.0f ms", 1000*median(commits)), "", nil)
	t.add("  the same image added with --hash blake3", fmt.Sprintf("%.0f MB/s = %.0f%% of bare libp2p", median(b3s), 100*median(b3OfBare)), "", nil)
	t.add("  bare libp2p stream (TLS, TCP), two processes", fmt.Sprintf("%.0f MB/s", bare), "", nil)
	t.add("  raw TCP copy, two processes", fmt.Sprintf("%.0f MB/s", median(raws)), "", nil)
	t.add("  CPU seconds per GiB, both ends: fetch (two daemons) vs the bare stream", fmt.Sprintf("%.2f vs %.2f (%.1fx); load at the end %s", median(fetchCPU), median(bareCPU), median(fetchCPU)/median(bareCPU), loadAvg()), "", nil)
	if rerr == nil {
		r := median(ofRsync)
		t.add("  rsync daemon, full copy", fmt.Sprintf("%.0f MB/s (fetch = %.2fx)", median(rsyncs), r), "fetch faster", check(r > 1))
		t.add("  rsync daemon, full copy with --fsync (durable, as the fetch)", fmt.Sprintf("%.0f MB/s", median(rsyncSyncs)), "", nil)
	} else {
		t.add("  rsync daemon, full copy", "skipped: "+rerr.Error()+" (apt-get install rsync)", "", nil)
	}

	// Update: B holds v1 and fetches v2.
	data := filepath.Join(dir, "peer-upd")
	b, err := startPeer(ctx, bin, data, a, "ref:base", cids["ref:base"])
	if err != nil {
		return err
	}
	defer func() { b.Stop(); os.RemoveAll(data) }()
	if _, err := b.Client.Fetch(ctx, "ref:base", nil); err != nil {
		return err
	}
	v2, err := a.Client.Add(ctx, api.AddRequest{Name: "ref:clustered", Path: clustered, Chunking: "cdc"}, nil)
	if err != nil {
		return err
	}
	// Wait for v2 itself, as A published it and with A holding it: B's
	// catalogue already has other layers (ref:base, ref:blake3), so a
	// count of its entries says nothing about whether v2 has arrived.
	aid, err := a.Client.Identity(ctx)
	if err != nil {
		return err
	}
	if err := waitLayer(ctx, b.Client, "ref:clustered", v2.Layer.CID, aid.PeerID); err != nil {
		return fmt.Errorf("update: %w", err)
	}
	start := time.Now()
	res, err := b.Client.Fetch(ctx, "ref:clustered", nil)
	el := time.Since(start)
	if err != nil {
		return err
	}
	ratio = float64(res.FetchedBytes) / float64(v2.NewBytes)
	t.add("update fetch (B has v1, fetches v2): bytes moved", fmt.Sprintf("%.1f MiB in %s = %.2fx the new chunks", float64(res.FetchedBytes)/(1<<20), el.Round(time.Millisecond), ratio), "<= 1.2x new chunks", check(ratio <= 1.2))
	if rerr == nil {
		dest := filepath.Join(dir, "rsync-delta")
		if err := copyFile(base, dest, false); err != nil {
			return err
		}
		n, el, err := rsyncPull(url, filepath.Base(clustered), dest)
		os.Remove(dest)
		if err != nil {
			return err
		}
		t.add("  rsync delta transfer of the same update", fmt.Sprintf("%.1f MiB in %s", float64(n)/(1<<20), el.Round(time.Millisecond)), "fetch moves fewer bytes", check(res.FetchedBytes < n))
	} else {
		t.add("  rsync delta transfer of the same update", "skipped: no rsync (see above)", "", nil)
	}
	return nil
}

// writeSynced writes the bytes of src to a new file dst through plain
// writes with one fsync at the end (as dd conv=fsync does), then removes it.
func writeSynced(src, dst string) error {
	defer os.Remove(dst)
	return copyFile(src, dst, true)
}

// copyFile copies src to a new file dst; durable: by plain writes (no
// in-kernel copy) and an fsync.
func copyFile(src, dst string, durable bool) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	var w io.Writer = out
	if durable {
		w = struct{ io.Writer }{out} // hides ReadFrom: no copy_file_range
	}
	if _, err := io.CopyBuffer(w, in, make([]byte, 1<<20)); err != nil {
		out.Close()
		return err
	}
	if durable {
		if err := out.Sync(); err != nil {
			out.Close()
			return err
		}
	}
	return out.Close()
}
