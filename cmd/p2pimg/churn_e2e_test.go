package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/p2pimg/p2pimg/node/api"
)

var churnSoak = flag.Duration("churn-soak", 0, "run TestChurn this long (make soak); default a short run")

// TestChurn runs a 6-node testnet under the nemesis (kill -9 and restart,
// SIGSTOP past the lease, partitions) while layers are published, fetched
// and activated everywhere and seats are claimed and released. Afterwards
// every host must converge on the newest activation, every store must
// verify, no seat may ever have been over-allocated, and daemon memory must
// stay bounded. `make soak` runs it for longer (-churn-soak 10m), with two
// misbehaving members beside the six: one answers chunk requests with 8 MiB
// garbage items, one claims layers it never serves; nothing they send may
// be accepted.
func TestChurn(t *testing.T) {
	const honest = 6
	var bad map[int][]string
	if *churnSoak > 0 {
		bad = map[int][]string{honest + 1: {"--test-garbage-serve", strconv.Itoa(8 << 20)}, honest + 2: {"--test-missing-serve"}}
	}
	c, ctx, wg, tn := startChaos(t, honest+len(bad), bad, 30*time.Second, *churnSoak)
	l := c.l
	hosts, badIDs := c.roles(honest)
	var adds, fetches, acts, opErrors, badBytes atomic.Int64
	wg.Go(func() { // publish a new version of churn:live, and fetch it elsewhere
		r := rand.New(rand.NewPCG(c.seed, 100))
		for v := 0; ctx.Err() == nil; v++ {
			src := filepath.Join(t.TempDir(), "src")
			for f := range 3 {
				b := make([]byte, 64<<10+r.IntN(448<<10))
				for k := range b {
					b[k] = byte(r.Uint32())
				}
				os.MkdirAll(filepath.Join(src, "d"), 0o755)
				os.WriteFile(filepath.Join(src, "d", fmt.Sprintf("f%d", f)), b, 0o644)
			}
			os.WriteFile(filepath.Join(src, "version"), []byte(strconv.Itoa(v)), 0o644)
			octx, ocancel := context.WithTimeout(ctx, 10*time.Second)
			if _, err := c.client(r.IntN(honest)).Add(octx, api.AddRequest{Name: "churn:live", Path: src}, nil); err == nil {
				adds.Add(1)
			} else {
				opErrors.Add(1)
			}
			for i := range bad { // the misbehaving members hold it too, and say so
				c.client(i-1).Add(octx, api.AddRequest{Name: "churn:bad", Path: src}, nil)
			}
			if res, err := c.client(r.IntN(honest)).Fetch(octx, "churn:live", nil); err == nil {
				fetches.Add(1)
				for _, id := range badIDs {
					badBytes.Add(res.Peers[id])
				}
			} else {
				opErrors.Add(1)
			}
			ocancel()
			sleepCtx(ctx, time.Duration(500+r.IntN(1500))*time.Millisecond)
		}
	})
	wg.Go(func() { // activate it on every host (or deactivate it), from a random host
		r := rand.New(rand.NewPCG(c.seed, 101))
		for ctx.Err() == nil {
			sleepCtx(ctx, time.Duration(1000+r.IntN(2000))*time.Millisecond)
			actx, acancel := context.WithTimeout(ctx, 10*time.Second)
			args := []string{"--testnet-dir", l.Dir, "--node", strconv.Itoa(1 + r.IntN(honest))}
			if r.IntN(4) == 0 {
				args = append(args, "deactivate", "churn:live", "--hosts", hosts)
			} else {
				args = append(args, "activate", "churn:live", "--at", "/opt/churn", "--hosts", hosts)
			}
			if exec.CommandContext(actx, bin, args...).Run() == nil {
				acts.Add(1)
			} else {
				opErrors.Add(1)
			}
			acancel()
		}
	})
	c.nemesis(ctx)
	wg.Wait()

	// The nemesis left every host up and the network whole: every host's
	// catalogue must agree on the newest version, and one last activation
	// must settle everywhere.
	calm := time.Now()
	agree := func() bool {
		first := ""
		for i := range honest {
			id, err := c.client(i).Resolve(context.Background(), "churn:live")
			if err != nil || (first != "" && id != first) {
				return false
			}
			first = id
		}
		return true
	}
	mesh := func() bool { // every honest host connected to every other again
		for i := range honest {
			ps, err := c.client(i).Peers(context.Background())
			if err != nil {
				return false
			}
			n := 0
			for _, p := range ps {
				if strings.Contains(hosts, p.PeerID) || hosts == "all" {
					n++
				}
			}
			if n < honest-1 {
				return false
			}
		}
		return true
	}
	waitWithin(t, time.Minute, "every host connected and agreeing on churn:live after the last fault", func() bool { return mesh() && agree() })
	out, errOut, code := tn("--node", "1", "activate", "churn:live", "--at", "/opt/churn", "--hosts", hosts, "--wait", "--timeout", "90s")
	if code != 0 || !strings.Contains(out, fmt.Sprintf("settled on all %d host(s)", honest)) {
		t.Fatalf("no convergence after the last fault: %s %s", out, errOut)
	}
	converged := time.Since(calm)
	want, err := c.client(0).Resolve(context.Background(), "churn:live")
	if err != nil {
		t.Fatal(err)
	}
	var maxRSS int64
	var diverged, corrupt, maxG int
	for i, nd := range l.Nodes {
		maxRSS = max(maxRSS, rssKiB(nd.PID))
		if i >= honest {
			continue
		}
		cl := c.client(i)
		if id, err := cl.Resolve(context.Background(), "churn:live"); err != nil || id != want {
			diverged++
			t.Errorf("node %d maps churn:live to %s (%v), node 1 to %s", i+1, id, err, want)
		}
		v, err := cl.Verify(context.Background(), nil)
		if err != nil || len(v.Corrupt) > 0 {
			corrupt += len(v.Corrupt)
			t.Errorf("node %d store: %v, corrupt %v", i+1, err, v.Corrupt)
		}
		if st, err := cl.Status(context.Background()); err == nil {
			maxG = max(maxG, st.Goroutines)
		}
	}
	if maxG > 5000 {
		t.Errorf("a daemon runs %d goroutines after the churn", maxG)
	}
	if maxRSS > 400<<10 {
		t.Errorf("a daemon grew to %d MiB", maxRSS>>10)
	}
	n := c.checkJournals(2)
	var tab strings.Builder
	tw := tabwriter.NewWriter(&tab, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "churn, %d hosts (+%d misbehaving)\tvalue\n", honest, len(bad))
	fmt.Fprintf(tw, "layer versions published / fetches / (de)activations\t%d / %d / %d\n", adds.Load(), fetches.Load(), acts.Load())
	fmt.Fprintf(tw, "seat grants / refused (no seat)\t%d / %d\n", c.grants.Load(), c.refused.Load())
	fmt.Fprintf(tw, "operations failed under faults (retried later)\t%d\n", opErrors.Load()+c.undecided.Load())
	fmt.Fprintf(tw, "faults: kills / pauses / partitions\t%d / %d / %d\n", c.kills, c.pauses, c.partitions)
	fmt.Fprintf(tw, "violations: over-allocations (checked %d intervals) / corrupt chunks / hosts diverged\t0 / %d / %d\n", n, corrupt, diverged)
	if len(bad) > 0 {
		blocks := 0 // honest hosts' logs: the garbage member blocked
		for i := range honest {
			b, _ := os.ReadFile(filepath.Join(l.Nodes[i].Data, "daemon.log"))
			blocks += strings.Count(string(b), "peer blocked: repeated chunk protocol violations")
		}
		fmt.Fprintf(tw, "misbehaving members: blocked by honest hosts (times)\t%d\n", blocks)
		fmt.Fprintf(tw, "violations: chunk bytes accepted from the misbehaving members\t%d\n", badBytes.Load())
	}
	fmt.Fprintf(tw, "convergence after the last fault\t%.1f s\n", converged.Seconds())
	fmt.Fprintf(tw, "largest daemon RSS / goroutines at the end\t%d MiB / %d\n", maxRSS>>10, maxG)
	tw.Flush()
	t.Logf("\n%s", tab.String())
	if badBytes.Load() > 0 {
		t.Errorf("%d chunk bytes were accepted from the misbehaving members", badBytes.Load())
	}
	if adds.Load() < 3 || acts.Load() < 2 {
		t.Fatalf("too little work done under churn (%d adds, %d activations) for the checks to mean anything", adds.Load(), acts.Load())
	}
}

// rssKiB is a process's resident set size.
func rssKiB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v
		}
	}
	return 0
}

// roles is the --hosts selector of the first honest nodes ("all" when
// there are no others) and the peer ids of the rest (the misbehaving).
func (c *chaos) roles(honest int) (hosts string, bad []string) {
	if len(c.l.Nodes) == honest {
		return "all", nil
	}
	var ids []string
	for i := range c.l.Nodes {
		id, err := c.client(i).Identity(context.Background())
		if err != nil {
			c.t.Fatal(err)
		}
		if i < honest {
			ids = append(ids, id.PeerID)
		} else {
			bad = append(bad, id.PeerID)
		}
	}
	return strings.Join(ids, ","), bad
}
