package testnet_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/p2pimg/p2pimg/license"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/testnet"
)

// seatNet starts n nodes of which the first 3 are keepers, trusting a
// fresh issuer, with short leases, and installs a licence of seats seats.
func seatNet(t *testing.T, n, seats, share int) (*testnet.Net, ed25519.PrivateKey) {
	t.Helper()
	return seatNetTTL(t, n, seats, share, "2s", "1s")
}

// seatNetTTL is seatNet with the given lease and renewal margin.
func seatNetTTL(t *testing.T, n, seats, share int, ttl, margin string) (*testnet.Net, ed25519.PrivateKey) {
	t.Helper()
	key, _, err := license.NewIssuerKey()
	if err != nil {
		t.Fatal(err)
	}
	net := testnet.New(t, n, testnet.WithKeepers(3, func(c *cluster.Config) {
		c.Issuers = []string{license.PublicText(key.Public().(ed25519.PublicKey))}
		c.SeatTTL, c.SeatMargin = ttl, margin
	}))
	l, err := license.Issue(key, "winsrv", seats, share, time.Now(), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := net.Nodes[n-1].Client.InstallLicense(ctx, l.Text()); err != nil {
		t.Fatal(err)
	}
	return net, key
}

func isConflict(err error) bool {
	var ae *api.Error
	return errors.As(err, &ae) && ae.Code == api.CodeConflict
}

// Five hosts, three keepers, two seats, four hosts racing: exactly two
// grants; a waiter gets the seat a holder releases; every host's list
// converges on the table.
func TestSeatsRace(t *testing.T) {
	net, _ := seatNet(t, 5, 2, 1)
	type out struct {
		g   api.Grant
		err error
	}
	res := make([]out, 5)
	var wg sync.WaitGroup
	for i := 1; i <= 4; i++ {
		wg.Go(func() {
			g, err := net.Nodes[i].Client.Claim(ctx, api.ClaimRequest{Product: "winsrv", Consumer: "vm1"})
			res[i] = out{g, err}
		})
	}
	wg.Wait()
	var granted, refused []int
	tokens := map[uint64]bool{}
	for i := 1; i <= 4; i++ {
		switch r := res[i]; {
		case r.err == nil:
			granted = append(granted, i)
			tokens[r.g.Token] = true
		case isConflict(r.err) && strings.Contains(r.err.Error(), "no free seat"):
			refused = append(refused, i)
		default:
			t.Fatalf("node %d: %v", i, r.err)
		}
	}
	if len(granted) != 2 || len(tokens) != 2 {
		t.Fatalf("granted to %v with tokens %v, want exactly 2 distinct grants", granted, tokens)
	}
	for _, i := range granted {
		c, err := net.Nodes[0].Client.Check(ctx, res[i].g.Token)
		if err != nil || !c.Current {
			t.Fatalf("grant of node %d not current: %v %+v", i, err, c)
		}
	}

	// The two refused hosts wait; one holder releases; exactly one waiter
	// gets the freed seat.
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	got := make(chan int, 2)
	for _, i := range refused {
		go func() {
			if _, err := net.Nodes[i].Client.Claim(wctx, api.ClaimRequest{Product: "winsrv", Consumer: "vm1", Wait: true}); err == nil {
				got <- i
			}
		}()
	}
	rel, err := net.Nodes[granted[0]].Client.Release(ctx, api.ReleaseRequest{Product: "winsrv", Consumer: "vm1"})
	if err != nil || len(rel.Freed) != 1 {
		t.Fatalf("release: %v %+v", err, rel)
	}
	winner := <-got
	if c, _ := net.Nodes[0].Client.Check(ctx, res[granted[0]].g.Token); c.Current {
		t.Fatal("released token still current")
	}
	// Every host's list shows both seats held, by the other holder and the winner.
	want := map[string]bool{net.Nodes[granted[1]].Node().ID().String(): true, net.Nodes[winner].Node().ID().String(): true}
	for _, nd := range net.Nodes {
		net.Eventually(10*time.Second, "seat list of every host", func() bool {
			l, err := nd.Client.Licenses(ctx)
			if err != nil || len(l.Licenses) != 1 || l.Licenses[0].Used != 2 || len(l.Holders) != 2 {
				return false
			}
			for _, h := range l.Holders {
				if !want[h.Host] {
					return false
				}
			}
			return true
		})
	}
	cancel()
	select {
	case i := <-got:
		t.Fatalf("node %d also got a seat: over-allocation", i)
	default:
	}
}

// A stopped holder's seat goes to a waiter after its lease and the margin,
// and its token is refused from then on.
func TestSeatsHolderDies(t *testing.T) {
	net, _ := seatNet(t, 4, 1, 1)
	g, err := net.Nodes[3].Client.Claim(ctx, api.ClaimRequest{Product: "winsrv", Consumer: "vm1"})
	if err != nil {
		t.Fatal(err)
	}
	net.Stop(3)
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	g2, err := net.Nodes[0].Client.Claim(wctx, api.ClaimRequest{Product: "winsrv", Consumer: "vm1", Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	if g2.Token <= g.Token {
		t.Fatalf("new token %d not above the old %d", g2.Token, g.Token)
	}
	// TTL 2s + margin 1s: not before, whatever the timing of the test.
	if time.Since(start) < 2*time.Second {
		t.Fatalf("seat granted again after %v, before the dead holder's lease could end", time.Since(start))
	}
	c, err := net.Nodes[1].Client.Check(ctx, g.Token)
	if err != nil || c.Current || c.Reason == "" {
		t.Fatalf("old token: %v %+v", err, c)
	}
	// The holder comes back as a new run: the old token is not its any more.
	net.Restart(3)
	c, err = net.Nodes[3].Client.Check(ctx, g.Token)
	if err != nil || c.Current {
		t.Fatalf("old token current after restart: %v %+v", err, c)
	}
}

// Keepers split 2|1 with the leader alone: the leader's side grants
// nothing; the majority side grants within the seats.
func TestSeatsKeeperPartition(t *testing.T) {
	net, _ := seatNet(t, 5, 2, 1)
	var leader int
	net.Eventually(10*time.Second, "a keeper leader", func() bool {
		l, err := net.Nodes[0].Client.Licenses(ctx)
		if err != nil || l.Leader == "" {
			return false
		}
		for i, nd := range net.Nodes[:3] {
			if nd.Node().ID().String() == l.Leader {
				leader = i
				return true
			}
		}
		return false
	})
	var majority []int
	for i := range 3 {
		if i != leader {
			majority = append(majority, i)
		}
	}
	// Host 3 stays with the old leader, host 4 with the other keepers.
	net.Partition([]int{leader, 3}, append(majority, 4))

	_, err := net.Nodes[3].Client.Claim(ctx, api.ClaimRequest{Product: "winsrv", Consumer: "vm1"})
	if err == nil || !strings.Contains(err.Error(), "no keeper majority") {
		t.Fatalf("minority side: claim answered %v, want no decision", err)
	}
	for i, want := range []bool{true, true, false} {
		g, err := net.Nodes[4].Client.Claim(ctx, api.ClaimRequest{Product: "winsrv", Consumer: "vm" + string(rune('1'+i))})
		if want && err != nil {
			t.Fatalf("majority side claim %d: %v", i, err)
		}
		if !want && !isConflict(err) {
			t.Fatalf("majority side claim %d beyond the seats: %v %+v", i, err, g)
		}
	}
	net.Heal()
	// After healing, the old leader has learnt the grants: still no seat.
	_, err = net.Nodes[3].Client.Claim(ctx, api.ClaimRequest{Product: "winsrv", Consumer: "vm1"})
	if !isConflict(err) {
		t.Fatalf("after heal: %v", err)
	}
}

// Forged, edited, expired and older (replayed) licences are refused with
// the reason; a claim for a product without a licence is refused.
func TestLicenceRefusals(t *testing.T) {
	net, key := seatNet(t, 3, 1, 1)
	other, _, _ := license.NewIssuerKey()
	forged, _ := license.Issue(other, "winsrv", 100, 1, time.Now(), time.Time{})
	edited, _ := license.Issue(key, "winsrv", 1, 1, time.Now(), time.Time{})
	edited.Seats = 100
	expired, _ := license.Issue(key, "winsrv", 100, 1, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour))
	older, _ := license.Issue(key, "winsrv", 100, 1, time.Now().Add(-time.Hour), time.Time{})
	cases := []struct {
		name, text, want string
	}{
		{"unknown issuer", forged.Text(), "not trusted"},
		{"edited", edited.Text(), "bad signature"},
		{"expired", expired.Text(), "expired"},
		{"replayed older", older.Text(), "replay"},
		{"garbage", "hello", "malformed"},
	}
	for _, c := range cases {
		_, err := net.Nodes[1].Client.InstallLicense(ctx, c.text)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error with %q", c.name, err, c.want)
		}
	}
	net.Eventually(10*time.Second, "the list shows the one good licence", func() bool {
		l, err := net.Nodes[1].Client.Licenses(ctx)
		return err == nil && len(l.Licenses) == 1 && l.Licenses[0].Seats == 1
	})
	if _, err := net.Nodes[1].Client.Claim(ctx, api.ClaimRequest{Product: "other", Consumer: "vm1"}); err == nil || !strings.Contains(err.Error(), "no licence") {
		t.Fatalf("claim without a licence: %v", err)
	}
	if _, err := net.Nodes[1].Client.Claim(ctx, api.ClaimRequest{Product: "winsrv", Consumer: "bad id"}); err == nil {
		t.Fatal("bad consumer id accepted")
	}
}

// A layer published for a licensed product activates only with a seat:
// with one seat and two selected hosts, one is active and the other waits;
// deactivating the first hands the seat to the second.
func TestLicensedActivation(t *testing.T) {
	key, _, _ := license.NewIssuerKey()
	kf := filepath.Join(t.TempDir(), "op.key")
	opID, err := cluster.NewKeyFile(kf)
	if err != nil {
		t.Fatal(err)
	}
	opKey, _ := cluster.LoadKeyFile(kf)
	net := testnet.New(t, 4, testnet.WithKeepers(3, func(c *cluster.Config) {
		c.Issuers = []string{license.PublicText(key.Public().(ed25519.PublicKey))}
		c.SeatTTL, c.SeatMargin = "2s", "1s"
		c.Operators = []string{opID.String()}
	}))
	l, _ := license.Issue(key, "winsrv", 1, 1, time.Now(), time.Time{})
	if _, err := net.Nodes[0].Client.InstallLicense(ctx, l.Text()); err != nil {
		t.Fatal(err)
	}
	src := tree(t, map[string]string{"app.exe": "licensed"})
	if _, err := net.Nodes[0].Client.Add(ctx, api.AddRequest{Name: "app:1", Path: src, Product: "winsrv"}, nil); err != nil {
		t.Fatal(err)
	}
	id := mustResolve(t, net.Nodes[0], "app:1")
	for _, nd := range net.Nodes[1:] {
		waitCatalog(t, net, nd, "app:1", id)
	}
	a, b := net.Nodes[1], net.Nodes[3]
	res := act(t, opKey, net.Nodes[0], "app:1", "/opt/app", a.Node().ID().String()+","+b.Node().ID().String(), api.OpActivate)
	states := func() map[string]api.State {
		out := map[string]api.State{}
		sts, _ := net.Nodes[0].Client.Activations(ctx)
		for _, s := range sts {
			if s.Layer == "app:1" && s.Time == res.Time {
				out[s.Host] = s.State
			}
		}
		return out
	}
	var active, waiting *testnet.Node
	net.Eventually(20*time.Second, "one host active, the other waiting for a seat", func() bool {
		st := states()
		sa, sb := st[a.Node().ID().String()], st[b.Node().ID().String()]
		switch {
		case sa == api.StateActive && sb == api.StateWaitingSeat:
			active, waiting = a, b
		case sb == api.StateActive && sa == api.StateWaitingSeat:
			active, waiting = b, a
		default:
			return false
		}
		return true
	})
	if readAt(active, "opt/app/app.exe") != "licensed" {
		t.Fatal("the active host does not show the layer")
	}
	if _, err := os.Lstat(filepath.Join(waiting.Data, "root", "opt", "app")); !os.IsNotExist(err) {
		t.Fatal("the host without a seat exposed the layer")
	}
	net.Eventually(10*time.Second, "the active host holds the seat for the layer", func() bool {
		ls, err := net.Nodes[2].Client.Licenses(ctx)
		return err == nil && len(ls.Holders) == 1 && ls.Holders[0].Host == active.Node().ID().String() && ls.Holders[0].Consumers[0] == "layer:app:1"
	})
	off := act(t, opKey, net.Nodes[0], "app:1", "", active.Node().ID().String(), api.OpDeactivate)
	settled(t, net, off, "app:1", api.StateInactive, active)
	settled(t, net, res, "app:1", api.StateActive, waiting)
	if readAt(waiting, "opt/app/app.exe") != "licensed" {
		t.Fatal("the host that got the seat does not show the layer")
	}
}
