package testnet_test

import (
	"testing"
	"time"

	"github.com/p2pimg/p2pimg/node"
	"github.com/p2pimg/p2pimg/testnet"
)

// A host without the cluster's PSK cannot connect at all.
func TestWrongPSKCannotConnect(t *testing.T) {
	c1, _ := node.NewCluster("test", nil, nil)
	c2, _ := node.NewCluster("test", nil, nil) // same name, another key
	net := testnet.New(t, 3, testnet.Isolated(2), testnet.WithConfig(func(i int, c *node.Config) {
		c.Cluster = c1
		if i == 2 {
			c.Cluster = c2
		}
	}))
	err := net.Nodes[2].Node().Connect(ctx, net.Nodes[0].Node().Addrs()[0])
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
	net := testnet.New(t, 3, testnet.WithMembersOnly(2), testnet.Isolated(2))
	outsider := net.Nodes[2]
	img := image(t, 1<<20, 9)
	// The outsider holds the cluster file but is not on its members list.
	add(t, outsider, "evil:1", img)
	outsider.Node().Connect(ctx, net.Nodes[0].Node().Addrs()[0])
	net.Eventually(10*time.Second, "the member has no connection to the outsider", func() bool {
		ps, _ := net.Nodes[0].Client.Peers(ctx)
		for _, p := range ps {
			if p.PeerID == outsider.Node().ID().String() {
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
