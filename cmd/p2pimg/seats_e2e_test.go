package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/p2pimg/p2pimg/license"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/client"
	"github.com/p2pimg/p2pimg/node/seats"
	"github.com/p2pimg/p2pimg/testnet"
)

var seatSoak = flag.Duration("seat-soak", 0, "run TestSeatFaults this long (make soak); default a short run")

// seatTestnet starts daemon processes (3 keepers, 2 s leases) and
// installs a licence of 2 seats through the CLI.
func seatTestnet(t *testing.T, nodes int, journal bool, extra map[int][]string, skew ...time.Duration) (*testnet.Local, func(args ...string) (string, string, int)) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tn")
	o := testnet.UpOptions{Keepers: 3, SeatTTL: "2s", SeatJournal: journal, Extra: extra}
	if len(skew) > 0 {
		o.ClockSkew = skew[0]
	}
	l, err := testnet.Up(context.Background(), bin, dir, nodes, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, nd := range l.Nodes {
			syscall.Kill(nd.PID, syscall.SIGCONT)
		}
		l.Down(context.Background(), true)
	})
	tn := func(args ...string) (string, string, int) {
		t.Helper()
		return cli(t, nil, append([]string{"--testnet-dir", dir}, args...)...)
	}
	lic, errOut, code := tn("--node", "1", "license", "issue", "--product", "winsrv", "--seats", "2")
	if code != 0 {
		t.Fatalf("issue: %s", errOut)
	}
	licFile := filepath.Join(t.TempDir(), "winsrv.lic")
	os.WriteFile(licFile, []byte(lic), 0o600)
	if out, errOut, code := tn("--node", "4", "license", "install", licFile); code != 0 || !strings.Contains(out, "installed licence") {
		t.Fatalf("install: %s %s", out, errOut)
	}
	return l, tn
}

// Kill -9 a holder: its seat goes to a waiter after the lease and the
// margin; the old token is refused by check, also on the restarted holder.
func TestSeatHolderKilled(t *testing.T) {
	t.Parallel()
	l, tn := seatTestnet(t, 5, false, nil)
	var tokens []string
	for _, k := range []string{"4", "5"} {
		out, errOut, code := tn("--node", k, "license", "claim", "winsrv", "--for", "vm-"+k)
		if code != 0 {
			t.Fatalf("claim on node %s: %s", k, errOut)
		}
		f := strings.Fields(out[strings.Index(out, "token ")+6:])
		tokens = append(tokens, strings.TrimSuffix(f[0], ","))
	}
	if _, errOut, code := tn("--node", "3", "license", "claim", "winsrv", "--for", "vm-3"); code != 1 || !strings.Contains(errOut, "no free seat of winsrv: 2 of 2 held") {
		t.Fatalf("third claim: exit %d, %s", code, errOut)
	}
	if out, _, code := tn("--node", "5", "license", "check", tokens[1]); code != 0 || !strings.Contains(out, "current") {
		t.Fatalf("check on the holder: %d %s", code, out)
	}
	if err := l.Kill(5); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := tn("--node", "3", "license", "claim", "winsrv", "--for", "vm-3", "--wait", "--timeout", "30s")
	if code != 0 || !strings.Contains(out, "granted seat 2 of winsrv") {
		t.Fatalf("waiter: exit %d: %s %s", code, out, errOut)
	}
	if _, errOut, code := tn("--node", "1", "license", "check", tokens[1]); code != 1 || !strings.Contains(errOut, "not current") {
		t.Fatalf("old token of the killed holder: exit %d %s", code, errOut)
	}
	if err := l.Restart(context.Background(), 5); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := tn("--node", "5", "license", "check", tokens[1]); code != 1 || !strings.Contains(errOut, "not current") {
		t.Fatalf("old token on the restarted holder: exit %d %s", code, errOut)
	}
	ls, _, _ := tn("--node", "2", "license", "ls")
	if !strings.Contains(ls, "winsrv   2      2     0") {
		t.Fatalf("license ls:\n%s", ls)
	}
}

// chaos runs seat workers on every host and a nemesis against a process
// testnet, and checks the hosts' seat journals afterwards.
type chaos struct {
	t    *testing.T
	l    *testnet.Local
	seed uint64
	mu   sync.Mutex // guards l (restarts change pids)

	grants, refused, undecided atomic.Int64
	holding                    []atomic.Bool // the nemesis aims at holders
	kills, pauses, partitions  int
}

// startChaos starts a seat testnet of n journaling hosts with a seat
// worker on each, for d (soak instead, when set). The caller runs the
// nemesis with ctx and waits for wg.
func startChaos(t *testing.T, n int, extra map[int][]string, d, soak time.Duration, skew ...time.Duration) (*chaos, context.Context, *sync.WaitGroup, func(args ...string) (string, string, int)) {
	if soak > 0 {
		d = soak
	}
	l, tn := seatTestnet(t, n, true, extra, skew...)
	c := &chaos{t: t, l: l, seed: uint64(time.Now().UnixNano()), holding: make([]atomic.Bool, len(l.Nodes))}
	t.Logf("seed %d, %v", c.seed, d)
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	wg := &sync.WaitGroup{}
	for i := range l.Nodes {
		wg.Go(func() { c.seatWorker(ctx, i) })
	}
	return c, ctx, wg, tn
}

func (c *chaos) client(i int) *client.Client {
	c.mu.Lock()
	defer c.mu.Unlock()
	return client.New(c.l.Nodes[i].Socket)
}

// seatWorker claims a seat on host i, holds it a while and releases it,
// until ctx ends.
func (c *chaos) seatWorker(ctx context.Context, i int) {
	r := rand.New(rand.NewPCG(c.seed, uint64(i)+2))
	for ctx.Err() == nil {
		cl := c.client(i)
		cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
		g, err := cl.Claim(cctx, api.ClaimRequest{Product: "winsrv", Consumer: "vm"})
		ccancel()
		switch {
		case err == nil:
			c.grants.Add(1)
			c.holding[i].Store(true)
			sleepCtx(ctx, time.Duration(r.IntN(4000))*time.Millisecond)
			c.holding[i].Store(false)
			rctx, rcancel := context.WithTimeout(context.Background(), 3*time.Second)
			cl.Release(rctx, api.ReleaseRequest{Token: g.Token})
			rcancel()
		case strings.Contains(err.Error(), "no free seat"):
			c.refused.Add(1)
		default:
			c.undecided.Add(1)
		}
		sleepCtx(ctx, time.Duration(r.IntN(300))*time.Millisecond)
	}
}

// nemesis kills (-9) and restarts hosts, pauses them (SIGSTOP) past the
// lease, and partitions the cluster, until ctx ends; it leaves every host
// running and the network whole.
func (c *chaos) nemesis(ctx context.Context) {
	rng := rand.New(rand.NewPCG(c.seed, 1))
	n := len(c.l.Nodes)
	for ctx.Err() == nil {
		sleepCtx(ctx, time.Duration(500+rng.IntN(1500))*time.Millisecond)
		k := 1 + rng.IntN(n)
		for j := range c.holding {
			if c.holding[j].Load() && rng.IntN(2) == 0 {
				k = j + 1
			}
		}
		switch rng.IntN(3) {
		case 0: // crash and come back
			c.mu.Lock()
			c.l.Kill(k)
			c.mu.Unlock()
			c.kills++
			sleepCtx(ctx, time.Duration(rng.IntN(3000))*time.Millisecond)
			c.mu.Lock()
			if err := c.l.Restart(context.Background(), k); err != nil {
				c.t.Errorf("restart node %d: %v", k, err)
			}
			c.mu.Unlock()
		case 1: // pause past the lease and the margin
			c.mu.Lock()
			pid := c.l.Nodes[k-1].PID
			c.mu.Unlock()
			syscall.Kill(pid, syscall.SIGSTOP)
			c.pauses++
			time.Sleep(time.Duration(2000+rng.IntN(3000)) * time.Millisecond)
			syscall.Kill(pid, syscall.SIGCONT)
		case 2: // k (often a holder) and a random set of others against the rest
			a, b := []int{k}, []int{}
			for j := 1; j <= n; j++ {
				if j != k && rng.IntN(3) == 0 {
					a = append(a, j)
				} else if j != k {
					b = append(b, j)
				}
			}
			if len(b) == 0 {
				b, a = a[len(a)-1:], a[:len(a)-1]
			}
			c.mu.Lock()
			c.l.Partition(context.Background(), [][]int{a, b})
			c.mu.Unlock()
			c.partitions++
			sleepCtx(ctx, time.Duration(2000+rng.IntN(3000))*time.Millisecond)
			c.mu.Lock()
			c.l.Partition(context.Background(), nil)
			c.mu.Unlock()
		}
	}
}

// checkJournals stops every daemon (so the journals are complete) and
// runs the over-allocation checker on them; it returns how many intervals
// it checked.
func (c *chaos) checkJournals(nseats int) int {
	t := c.t
	c.l.Down(context.Background(), true)
	var ivs []license.Interval
	for _, nd := range c.l.Nodes {
		f, err := os.Open(testnet.SeatJournal(nd))
		if err != nil {
			t.Fatal(err)
		}
		got, err := seats.ReadJournal(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		ivs = append(ivs, got...)
	}
	if c.grants.Load() < 5 || len(ivs) < 5 {
		t.Fatalf("too few grants (%d) for the check to mean anything", c.grants.Load())
	}
	if err := license.CheckIntervals(ivs, map[string]int{"winsrv": nseats}); err != nil {
		keep := filepath.Join(os.TempDir(), fmt.Sprintf("p2pimg-seatfail-%d", c.seed))
		exec.Command("cp", "-a", c.l.Dir, keep).Run()
		t.Fatalf("%v\n(journals and daemon logs kept in %s)", err, keep)
	}
	return len(ivs)
}

// TestSeatFaults is the randomised fault test: every host claims and
// releases in a loop while a nemesis kills (-9) and restarts hosts, pauses
// them (SIGSTOP) past the lease, and partitions the cluster. Every host
// journals when it treated a grant as valid; the checker asserts that at no
// instant more grants were valid than there are seats. `make soak` runs it
// for longer (-seat-soak 10m).
func TestSeatFaults(t *testing.T) {
	t.Parallel()
	c, ctx, wg, _ := startChaos(t, 5, nil, 25*time.Second, *seatSoak)
	c.nemesis(ctx)
	wg.Wait()
	n := c.checkJournals(2)
	t.Logf("%d grants, %d refused (no seat), %d undecided; nemesis: %d kills, %d pauses, %d partitions; %d valid intervals checked",
		c.grants.Load(), c.refused.Load(), c.undecided.Load(), c.kills, c.pauses, c.partitions, n)
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// The keepers' clocks run 2 s apart from each other (-2 s, 0, +2 s; the
// margin is 5 s): under the same faults, leases still never over-allocate.
func TestSeatFaultsClockSkew(t *testing.T) {
	t.Parallel()
	c, ctx, wg, _ := startChaos(t, 5, nil, 20*time.Second, *seatSoak, 2*time.Second)
	c.nemesis(ctx)
	wg.Wait()
	n := c.checkJournals(2)
	t.Logf("keeper clocks -2s/0/+2s: %d grants; nemesis: %d kills, %d pauses, %d partitions; %d valid intervals checked",
		c.grants.Load(), c.kills, c.pauses, c.partitions, n)
}
