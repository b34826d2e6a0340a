package testnet_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/faults"
	"github.com/p2pimg/p2pimg/testnet"
	"github.com/p2pimg/p2pimg/testnet/refimage"
)

var ctx = context.Background()

func image(t *testing.T, size int64, seed uint64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := refimage.Write(f, size, seed); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

func add(t *testing.T, nd *testnet.Node, name, path string) api.AddResult {
	t.Helper()
	res, err := nd.Client.Add(ctx, api.AddRequest{Name: name, Path: path, Chunking: "cdc"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// waitCatalog waits until node nd's catalogue maps name to cid.
// fetchAllAtOnce adds img on node 0 as vm:1 and has every other node fetch
// it at the same time; ok false when a fetch failed (the test is failed).
func fetchAllAtOnce(t *testing.T, net *testnet.Net, img string) (res api.AddResult, ok bool) {
	t.Helper()
	res = add(t, net.Nodes[0], "vm:1", img)
	for _, nd := range net.Nodes[1:] {
		waitCatalog(t, net, nd, "vm:1", res.Layer.CID)
	}
	var wg sync.WaitGroup
	for _, nd := range net.Nodes[1:] {
		wg.Go(func() {
			if _, err := nd.Client.Fetch(ctx, "vm:1", nil); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	return res, !t.Failed()
}

func waitCatalog(t *testing.T, net *testnet.Net, nd *testnet.Node, name, cid string) {
	t.Helper()
	net.Eventually(10*time.Second, "catalogue of node "+nd.Data+" maps "+name, func() bool {
		cl, err := nd.Client.Catalog(ctx)
		if err != nil {
			return false
		}
		for _, l := range cl {
			if l.Name == name && l.CID == cid {
				return true
			}
		}
		return false
	})
}

func checkoutSame(t *testing.T, nd *testnet.Node, name, src string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	if _, err := nd.Client.Checkout(ctx, api.CheckoutRequest{Name: name, Dir: out}, nil); err != nil {
		t.Fatal(err)
	}
	if testnet.HashFile(t, src) != testnet.HashFile(t, filepath.Join(out, filepath.Base(src))) {
		t.Fatalf("%s on %s differs from the source", name, nd.Data)
	}
}

func TestTwoNodesFetch(t *testing.T) {
	net := testnet.New(t, 2)
	img := image(t, 24<<20, 1)
	res := add(t, net.Nodes[0], "vm:1", img)
	waitCatalog(t, net, net.Nodes[1], "vm:1", res.Layer.CID)
	got, err := net.Nodes[1].Client.Fetch(ctx, "vm:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.Layer.State != chunk.Complete || got.Layer.CID != res.Layer.CID {
		t.Fatalf("fetch result %+v", got.Layer)
	}
	checkoutSame(t, net.Nodes[1], "vm:1", img)
	// A second fetch moves nothing.
	again, err := net.Nodes[1].Client.Fetch(ctx, "vm:1", nil)
	if err != nil || again.FetchedBytes != 0 {
		t.Fatalf("second fetch: %d bytes, %v", again.FetchedBytes, err)
	}
}

// Five nodes: one has the image (and serves slowly), four fetch at once.
// Every fetcher must serve chunks to the others, so the first host is not
// the only source: asserted from each node's byte counters.
func TestFanOutEveryNodeServes(t *testing.T) {
	net := testnet.New(t, 5, testnet.WithConfig(func(i int, c *node.Config) {
		if i == 0 {
			c.MaxUpload = 24 << 20 // bytes/s: the seed alone would take ~3 s
		}
	}))
	img := image(t, 64<<20, 2)
	res, ok := fetchAllAtOnce(t, net, img)
	if !ok {
		return
	}
	var fromSeed int64
	for _, nd := range net.Nodes[1:] {
		ps, err := nd.Client.Peers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var served int64
		for _, p := range ps {
			served += p.BytesOut
		}
		if served == 0 {
			t.Errorf("node %d served no chunks to the other fetchers", nd.Index)
		}
		checkoutSame(t, nd, "vm:1", img)
	}
	ps, _ := net.Nodes[0].Client.Peers(ctx)
	for _, p := range ps {
		fromSeed += p.BytesOut
	}
	if fromSeed >= 4*res.Layer.Size {
		t.Errorf("the seed served %d bytes: as much as four full copies", fromSeed)
	}
	t.Logf("seed served %.2f copies of the image to 4 fetchers", float64(fromSeed)/float64(res.Layer.Size))
}

// B has v1 and fetches v2: it moves exactly the chunks v2 has and v1 lacks.
func TestUpdateMovesOnlyNewChunks(t *testing.T) {
	net := testnet.New(t, 2)
	base := image(t, 48<<20, 3)
	upd := filepath.Join(t.TempDir(), "disk.raw")
	in, _ := os.Open(base)
	out, _ := os.Create(upd)
	if err := refimage.WriteUpdate(out, in, 48<<20, refimage.Clustered, 3); err != nil {
		t.Fatal(err)
	}
	in.Close()
	out.Close()
	v1 := add(t, net.Nodes[0], "vm:1", base)
	waitCatalog(t, net, net.Nodes[1], "vm:1", v1.Layer.CID)
	if _, err := net.Nodes[1].Client.Fetch(ctx, "vm:1", nil); err != nil {
		t.Fatal(err)
	}
	v2 := add(t, net.Nodes[0], "vm:2", upd)
	waitCatalog(t, net, net.Nodes[1], "vm:2", v2.Layer.CID)
	before := bytesIn(t, net.Nodes[1])
	got, err := net.Nodes[1].Client.Fetch(ctx, "vm:2", nil)
	if err != nil {
		t.Fatal(err)
	}
	moved := bytesIn(t, net.Nodes[1]) - before
	if got.FetchedBytes != v2.NewBytes || moved != v2.NewBytes {
		t.Fatalf("update fetch moved %d chunk bytes (result says %d); the new chunks are %d bytes", moved, got.FetchedBytes, v2.NewBytes)
	}
	if float64(v2.NewBytes) > 0.10*float64(v2.Layer.Size) {
		t.Fatalf("clustered update has %d new bytes of %d", v2.NewBytes, v2.Layer.Size)
	}
	checkoutSame(t, net.Nodes[1], "vm:2", upd)
}

func bytesIn(t *testing.T, nd *testnet.Node) int64 {
	ps, err := nd.Client.Peers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, p := range ps {
		n += p.BytesIn
	}
	return n
}

// A peer that corrupts what it serves is caught, disconnected and blocked;
// the fetch completes from the honest peer and no bad chunk is stored.
func TestLyingPeerIsBlocked(t *testing.T) {
	net := testnet.New(t, 3, testnet.WithConfig(func(i int, c *node.Config) {
		if i == 1 {
			c.Faults = &faults.Faults{CorruptServe: true}
		}
	}))
	img := image(t, 16<<20, 4)
	twoHolders(t, net, "vm:1", img) // the liar holds the same layer
	liar := net.Nodes[1].Node().ID().String()
	got, err := net.Nodes[2].Client.Fetch(ctx, "vm:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.Peers[liar] != 0 {
		t.Fatalf("%d bytes were accepted from the lying peer", got.Peers[liar])
	}
	ps, _ := net.Nodes[2].Client.Peers(ctx)
	for _, p := range ps {
		if p.PeerID == liar {
			t.Fatal("the lying peer is still connected")
		}
	}
	if err := net.Nodes[2].Node().Connect(ctx, net.Nodes[1].Node().Addrs()[0]); err == nil {
		t.Fatal("the lying peer could connect again right away")
	}
	v, err := net.Nodes[2].Client.Verify(ctx, nil)
	if err != nil || len(v.Corrupt) != 0 {
		t.Fatalf("verify after fetch: %+v %v", v, err)
	}
	checkoutSame(t, net.Nodes[2], "vm:1", img)
}

// Flipped bytes in a host's store: verify finds and removes them, the
// damaged chunks are never served, and a fetch takes them again from a
// peer.
func TestCorruptChunksRefetchedFromPeer(t *testing.T) {
	net := testnet.New(t, 2)
	img := image(t, 8<<20, 5)
	res := add(t, net.Nodes[0], "vm:1", img)
	waitCatalog(t, net, net.Nodes[1], "vm:1", res.Layer.CID)
	if _, err := net.Nodes[1].Client.Fetch(ctx, "vm:1", nil); err != nil {
		t.Fatal(err)
	}
	net.Stop(1)
	packs, _ := filepath.Glob(filepath.Join(net.Nodes[1].Data, "store", "packs", "*.pack"))
	for _, p := range packs {
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := f.Stat()
		f.WriteAt([]byte("CORRUPT"), fi.Size()/3)
		f.Close()
	}
	net.Restart(1)
	v, err := net.Nodes[1].Client.Verify(ctx, nil)
	if err != nil || len(v.Corrupt) == 0 || len(v.LayersAffected) != 1 {
		t.Fatalf("verify: %v %+v", err, v)
	}
	if _, err := net.Nodes[1].Client.Fetch(ctx, "vm:1", nil); err != nil {
		t.Fatal(err)
	}
	checkoutSame(t, net.Nodes[1], "vm:1", img)
	if v, err := net.Nodes[1].Client.Verify(ctx, nil); err != nil || len(v.Corrupt) != 0 {
		t.Fatalf("verify after the refetch: %v %+v", err, v)
	}
}

// A peer that says it has the chunks and then never sends them: the fetch
// completes from the honest peer (through the endgame), without waiting
// out the stalled requests.
func TestStalledPeer(t *testing.T) {
	net := testnet.New(t, 3, testnet.WithConfig(func(i int, c *node.Config) {
		if i == 0 {
			c.Faults = &faults.Faults{StallServe: true}
		}
	}))
	img := image(t, 16<<20, 6)
	res := add(t, net.Nodes[0], "vm:1", img)
	waitCatalog(t, net, net.Nodes[1], "vm:1", res.Layer.CID)
	if _, err := net.Nodes[1].Client.Add(ctx, api.AddRequest{Name: "vm:1", Path: img, Chunking: "cdc"}, nil); err != nil {
		t.Fatal(err) // the honest peer holds the same layer
	}
	waitCatalog(t, net, net.Nodes[2], "vm:1", res.Layer.CID)
	start := time.Now()
	r, err := net.Nodes[2].Client.Fetch(ctx, "vm:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	honest := net.Nodes[1].Node().ID().String()
	if r.Peers[honest] != r.FetchedBytes || r.FetchedBytes == 0 {
		t.Fatalf("bytes by peer %v, want all %d from the honest one", r.Peers, r.FetchedBytes)
	}
	t.Logf("fetched %d MiB in %v with a stalled peer in the cluster", r.FetchedBytes>>20, time.Since(start).Round(time.Millisecond))
	checkoutSame(t, net.Nodes[2], "vm:1", img)
}
