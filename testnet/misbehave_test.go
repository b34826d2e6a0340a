package testnet_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/p2pimg/p2pimg/node"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/faults"
	"github.com/p2pimg/p2pimg/testnet"
)

// counter is the sum of a node's metric name over labels with label=value
// ("" for all).
func counter(t *testing.T, nd *testnet.Node, name, label, value string) float64 {
	t.Helper()
	mfs, err := nd.Node().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.Metric {
			if label == "" || labelIs(m, label, value) {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// twoHolders adds the same image as name on nodes 0 and 1 and waits until
// node 2 knows both hold it.
func twoHolders(t *testing.T, net *testnet.Net, name, img string) api.AddResult {
	t.Helper()
	res := add(t, net.Nodes[0], name, img)
	add(t, net.Nodes[1], name, img)
	waitCatalog(t, net, net.Nodes[2], name, res.Layer.CID)
	net.Eventually(10*time.Second, "node 2 knows both holders of "+name, func() bool {
		cl, _ := net.Nodes[2].Client.Catalog(ctx)
		for _, l := range cl {
			if l.Name == name {
				return len(l.Holders) == 2
			}
		}
		return false
	})
	return res
}

// A peer that answers chunk requests with 8 MiB garbage items is caught
// by the item's length (before a buffer is allocated), counted and, past
// the threshold, blocked; the fetch completes from an honest peer and
// takes nothing from it.
func TestGarbagePeer(t *testing.T) {
	net := testnet.New(t, 3, testnet.WithConfig(func(i int, c *node.Config) {
		if i == 1 {
			c.Faults = &faults.Faults{GarbageServe: 8 << 20}
		}
	}))
	garbage := net.Nodes[1].Node().ID().String()
	// Which holder a fetch asks for what is the scheduler's choice: fetch
	// layers held by both until the garbage peer has been asked often
	// enough to be blocked. No byte of it is ever accepted.
	blocked := func() bool { return counter(t, net.Nodes[2], "p2pimg_xchg_peers_blocked_total", "", "") >= 1 }
	// Each fetch asks the garbage peer at most for its share once it has
	// misbehaved (a stream that fails is not reopened at once), so under
	// load it may take many fetches to see three violations.
	k := 1
	for ; k <= 40 && !blocked(); k++ {
		name := fmt.Sprintf("vm:%d", k)
		twoHolders(t, net, name, image(t, 8<<20, uint64(k)))
		got, err := net.Nodes[2].Client.Fetch(ctx, name, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got.Peers[garbage] != 0 {
			t.Fatalf("%s: %d bytes accepted from the garbage peer", name, got.Peers[garbage])
		}
	}
	if v := counter(t, net.Nodes[2], "p2pimg_xchg_violations_total", "side", "fetch"); v == 0 {
		t.Fatal("no violation counted against the garbage peer")
	}
	net.Eventually(10*time.Second, "the garbage peer blocked", blocked)
	t.Logf("blocked after %d fetches", k-1)
}

// A member that claims in gossip a layer it never serves is booked: its
// claim counts as unserved, and the fetch completes from the others.
func TestPeerClaimsButNeverServes(t *testing.T) {
	net := testnet.New(t, 3, testnet.WithConfig(func(i int, c *node.Config) {
		if i == 1 {
			c.Faults = &faults.Faults{MissingServe: true}
		}
	}))
	twoHolders(t, net, "vm:1", image(t, 4<<20, 9))
	// Cut node 0 off until node 2 has asked node 1 for the manifest.
	if err := net.Nodes[2].Client.Partition(ctx, []string{net.Nodes[0].Node().ID().String()}); err != nil {
		t.Fatal(err)
	}
	if _, err := net.Nodes[2].Client.Fetch(ctx, "vm:1", nil); err == nil {
		t.Fatal("fetched from a peer that serves nothing")
	}
	if v := counter(t, net.Nodes[2], "p2pimg_xchg_claims_unserved_total", "", ""); v == 0 {
		t.Fatal("the unserved claim was not booked")
	}
	if err := net.Nodes[2].Client.Partition(ctx, nil); err != nil {
		t.Fatal(err)
	}
	net.Eventually(20*time.Second, "the fetch completes from node 0", func() bool {
		_, err := net.Nodes[2].Client.Fetch(ctx, "vm:1", nil)
		return err == nil
	})
}
