package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/p2pimg/p2pimg/node/cluster"
)

// A keeper is killed (-9) for good and replaced while every host claims
// and releases seats: `license keepers add` makes a non-keeper host a
// keeper, `remove` drops the dead one, claims keep being granted, the
// dead keeper restarted stays out, and the interval checker finds no
// over-allocation across the replacement. Changing the keepers without
// an operator key is refused.
func TestKeeperReplaced(t *testing.T) {
	t.Parallel()
	c, ctx, wg, tn := startChaos(t, 5, nil, 35*time.Second, 0)
	l := c.l
	id := func(k int) string { return l.Nodes[k-1].PeerID }

	if _, errOut, code := cli(t, nil, "--socket", l.Nodes[4].Socket, "license", "keepers", "add", id(4)); code == 0 ||
		!strings.Contains(errOut, "only an operator may change the keepers") {
		t.Fatalf("add without a key: exit %d, %s", code, errOut)
	}
	stranger := filepath.Join(t.TempDir(), "stranger.key")
	if _, err := cluster.NewKeyFile(stranger); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := tn("--node", "5", "license", "keepers", "add", id(4), "--key", stranger); code == 0 ||
		!strings.Contains(errOut, "only an operator of this cluster may change the keepers") {
		t.Fatalf("add with a key that is no operator's: exit %d, %s", code, errOut)
	}

	grantsAt := func() int64 { return c.grants.Load() }
	waitGrants(t, ctx, grantsAt, grantsAt()+3, "before the kill")
	c.mu.Lock()
	err := l.Kill(1)
	c.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	out, errOut, code := tn("--node", "5", "license", "keepers", "add", id(4))
	if code != 0 || !strings.Contains(out, "added "+id(4)) {
		t.Fatalf("keepers add: exit %d: %s %s", code, out, errOut)
	}
	out, errOut, code = tn("--node", "2", "license", "keepers", "remove", id(1))
	if code != 0 || !strings.Contains(out, "removed "+id(1)) {
		t.Fatalf("keepers remove: exit %d: %s %s", code, out, errOut)
	}
	ls, errOut, code := tn("--node", "5", "license", "keepers", "ls")
	if code != 0 || strings.Count(ls, "voter") != 3 || !strings.Contains(ls, id(4)+"  voter  no") ||
		!strings.Contains(ls, id(1)+"  -      yes") || !strings.Contains(ls, "differ from the Raft configuration") {
		t.Fatalf("keepers ls after the replacement: exit %d\n%s%s", code, ls, errOut)
	}
	t.Logf("keepers ls after the replacement:\n%s", ls)
	waitGrants(t, ctx, grantsAt, grantsAt()+3, "after the replacement")

	// The dead keeper comes back: it learns it was removed and keeps no seats.
	c.mu.Lock()
	err = l.Restart(context.Background(), 1)
	c.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	// It hears of the change from the leader's notes or a keeper's answer.
	waitFor(t, "the returned host's keepers ls to show 3 voters, itself not one", func() bool {
		ls, errOut, code := tn("--node", "1", "license", "keepers", "ls")
		if code != 0 {
			t.Logf("keepers ls on the returned host: exit %d: %s", code, errOut)
		}
		return code == 0 && strings.Count(ls, "voter") == 3 && !strings.Contains(ls, id(1)+"  voter")
	})
	waitGrants(t, ctx, grantsAt, grantsAt()+3, "after the old keeper returned")
	wg.Wait()
	n := c.checkJournals(2)
	t.Logf("%d grants, %d refused, %d undecided; %d valid intervals checked", c.grants.Load(), c.refused.Load(), c.undecided.Load(), n)
}

// waitGrants waits until the seat workers have made want grants.
func waitGrants(t *testing.T, ctx context.Context, got func() int64, want int64, when string) {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for got() < want {
		select {
		case <-ctx.Done():
			t.Fatalf("%s: only %d grants, want %d", when, got(), want)
		case <-tick.C:
		}
	}
}
