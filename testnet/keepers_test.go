package testnet_test

import (
	"crypto/ed25519"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/license"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/node/seats"
	"github.com/p2pimg/p2pimg/testnet"
)

// The keepers' leader removes itself: the others elect a leader and keep
// deciding, every host learns the new keepers (also the removed one), and
// the fourth host added after takes its place; claims work throughout.
func TestKeeperLeaderRemovesItself(t *testing.T) {
	issuer, _, err := license.NewIssuerKey()
	if err != nil {
		t.Fatal(err)
	}
	op, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	opID, _ := peer.IDFromPrivateKey(op)
	net := testnet.New(t, 4, testnet.WithKeepers(3, func(c *cluster.Config) {
		c.Issuers = []string{license.PublicText(issuer.Public().(ed25519.PublicKey))}
		c.Operators = []string{opID.String()}
		c.SeatTTL, c.SeatMargin = "2s", "1s"
	}))
	l, err := license.Issue(issuer, "winsrv", 4, 1, time.Now(), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := net.Nodes[3].Client.InstallLicense(ctx, l.Text()); err != nil {
		t.Fatal(err)
	}
	change := func(op2 string, host string) {
		t.Helper()
		now, err := net.Nodes[3].Client.Keepers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		c, err := seats.NewKeeperChange(net.Nodes[0].Node().Identity().Cluster, op2, host, now)
		if err != nil {
			t.Fatal(err)
		}
		c, _ = seats.SignKeeperChange(op, c)
		b, _ := json.Marshal(c)
		if _, err := net.Nodes[3].Client.ChangeKeepers(ctx, b); err != nil {
			t.Fatalf("%s %s: %v", op2, host, err)
		}
	}
	voters := func(i int) []string {
		kl, err := net.Nodes[i].Client.Keepers(ctx)
		if err != nil {
			return nil
		}
		var out []string
		for _, k := range kl.Keepers {
			if k.Raft == "voter" {
				out = append(out, k.ID)
			}
		}
		slices.Sort(out)
		return out
	}
	kl, err := net.Nodes[3].Client.Keepers(ctx)
	if err != nil || kl.Leader == "" {
		t.Fatalf("keepers: %v %+v", err, kl)
	}
	leader := kl.Leader
	change(seats.KeeperRemove, leader)
	net.Eventually(20*time.Second, "every host sees two keepers, none of them the old leader", func() bool {
		for i := range net.Nodes {
			if v := voters(i); len(v) != 2 || slices.Contains(v, leader) {
				return false
			}
		}
		return true
	})
	for i, consumer := range []string{"vm-a", "vm-b"} {
		if _, err := net.Nodes[i+1].Client.Claim(ctx, api.ClaimRequest{Product: "winsrv", Consumer: consumer}); err != nil {
			t.Fatalf("claim after the leader left: %v", err)
		}
	}
	fourth := net.Nodes[3].Node().ID().String()
	change(seats.KeeperAdd, fourth)
	net.Eventually(20*time.Second, "every host sees the fourth host keep seats", func() bool {
		for i := range net.Nodes {
			if v := voters(i); len(v) != 3 || !slices.Contains(v, fourth) {
				return false
			}
		}
		return true
	})
	if _, err := net.Nodes[3].Client.Claim(ctx, api.ClaimRequest{Product: "winsrv", Consumer: "vm-c"}); err != nil {
		t.Fatalf("claim on the new keeper: %v", err)
	}
	net.Eventually(10*time.Second, "the new keeper's own table holds the three seats", func() bool {
		ls, err := net.Nodes[3].Client.Licenses(ctx)
		return err == nil && len(ls.Holders) == 3
	})
}
