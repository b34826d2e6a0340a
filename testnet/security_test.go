package testnet_test

import (
	"testing"
	"time"

	"github.com/p2pimg/p2pimg/node"
	"github.com/p2pimg/p2pimg/testnet"
)

// A host without the cluster's PSK cannot connect at all.
func TestWrongPSKCannotConnect(t *testing.T) {
	c1, _ := node.NewCluster("test", nil)
	c2, _ := node.NewCluster("test", nil) // same name, another key
	net := testnet.New(t, 2, testnet.WithCluster(c1))
	outsider := testnet.New(t, 1, testnet.WithCluster(c2))
	err := outsider.Nodes[0].Node().Connect(ctx, net.Nodes[0].Node().Addrs()[0])
	if err == nil {
		t.Fatal("a host with another PSK connected")
	}
	ps, _ := net.Nodes[0].Client.Peers(ctx)
	if len(ps) != 1 {
		t.Fatalf("cluster node has %d peers, want only its member", len(ps))
	}
}

// A host that is not on the members list is refused after authentication,
// and what it publishes never reaches the members.
func TestNonMemberRefused(t *testing.T) {
	net := testnet.New(t, 2, testnet.WithMembersOnly())
	outsider := testnet.New(t, 1)
	img := image(t, 1<<20, 9)
	add(t, outsider.Nodes[0], "evil:1", img)
	target := net.Nodes[0].Node()
	outsider.Nodes[0].Node().Connect(ctx, target.Addrs()[0]) // may fail, or be closed at once
	net.Eventually(10*time.Second, "the member has no connection to the outsider", func() bool {
		ps, _ := net.Nodes[0].Client.Peers(ctx)
		for _, p := range ps {
			if p.PeerID == outsider.Nodes[0].Node().ID().String() {
				return false
			}
		}
		return true
	})
	cl, _ := net.Nodes[0].Client.Catalog(ctx)
	if len(cl) != 0 {
		t.Fatalf("the outsider's layer reached a member: %+v", cl)
	}
}
