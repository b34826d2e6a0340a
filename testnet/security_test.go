package testnet_test

import (
	"testing"
	"time"

	"github.com/p2pimg/p2pimg/node"
	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/testnet"
)

// A host without the cluster's PSK cannot connect at all.
func TestWrongPSKCannotConnect(t *testing.T) {
	c1, _ := cluster.New("test", nil, nil)
	c2, _ := cluster.New("test", nil, nil) // same name, another key
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

// A partition changes what each node can reach and nothing else; Heal
// brings the mesh back.
func TestPartitionAndHeal(t *testing.T) {
	net := testnet.New(t, 4)
	peers := func(i int) int {
		ps, _ := net.Nodes[i].Client.Peers(ctx)
		return len(ps)
	}
	net.Partition([]int{0, 1}, []int{2})
	net.Eventually(10*time.Second, "groups {0,1} and {2} apart, 3 with everyone", func() bool {
		return peers(0) == 2 && peers(1) == 2 && peers(2) == 1 && peers(3) == 3
	})
	// Gossip still flows around the cut (through node 3); only direct links are refused.
	res := add(t, net.Nodes[0], "p:1", image(t, 1<<20, 5))
	waitCatalog(t, net, net.Nodes[3], "p:1", res.Layer.CID)
	if err := net.Nodes[2].Node().Connect(ctx, net.Nodes[0].Node().Addrs()[0]); err == nil {
		t.Fatal("node 2 could dial across the partition")
	}
	net.Heal()
	waitCatalog(t, net, net.Nodes[2], "p:1", res.Layer.CID)
}
