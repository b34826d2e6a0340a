package testnet_test

import (
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/expose"
	"github.com/p2pimg/p2pimg/node/expose/fuseview"
	"github.com/p2pimg/p2pimg/node/faults"
	"github.com/p2pimg/p2pimg/testnet"
)

// storedOrder records the chunks a node stored, in order.
type storedOrder struct {
	mu  sync.Mutex
	ids []string
}

func (s *storedOrder) trace(ev faults.ChunkEvent) {
	if ev.Stored {
		s.mu.Lock()
		s.ids = append(s.ids, ev.CID)
		s.mu.Unlock()
	}
}

// A host that activated an image lazily records which chunks its reads
// asked for in its first window, and names that access trace in its
// state; the next host activating the same version lazily fetches those
// chunks before any other (counted from the order its chunks are stored:
// every chunk the first host read arrives before any chunk farther than
// the kernel's read-ahead from those reads).
func TestAccessTraceFetchedFirst(t *testing.T) {
	if err := expose.OverlayWorks(t.TempDir()); err != nil {
		t.Skipf("overlay mounts unavailable here: %v", err)
	}
	if err := fuseview.Works(t.TempDir()); err != nil {
		t.Skipf("FUSE unavailable here: %v", err)
	}
	order := &storedOrder{}
	net := testnet.New(t, 3, testnet.WithConfig(func(i int, cfg *node.Config) {
		cfg.Expose = api.ModeFUSE
		cfg.TraceWindow = 3 * time.Second
		if i == 2 {
			cfg.Faults = &faults.Faults{ChunkTrace: order.trace}
		}
	}))
	const size, cs = 16 << 20, 64 << 10
	img := image(t, size, 21)
	res, err := net.Nodes[0].Client.Add(ctx, api.AddRequest{Name: "vm:1", Path: img, Chunking: "fixed", ChunkSize: "64K"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, nd := range net.Nodes[1:] {
		waitCatalog(t, net, nd, "vm:1", res.Layer.CID)
	}
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	idOf := func(i int) string {
		id, _ := chunk.SumCID(data[i*cs:(i+1)*cs], chunk.SHA256)
		return id.String()
	}
	// Reads of 4 KiB far apart, each in a chunk that is not all zeros; the
	// kernel may read up to 1 MiB ahead of each.
	var read []string
	var readAt []int
	near := map[string]bool{}
	for _, off := range []int{1 << 20, 5 << 20, 9 << 20, 13 << 20} {
		i := off / cs
		for chunk.IsZero(data[i*cs : (i+1)*cs]) {
			i++
		}
		read, readAt = append(read, idOf(i)), append(readAt, i*cs)
		for k := i; k < min(size/cs, i+(1<<20)/cs+1); k++ {
			near[idOf(k)] = true
		}
	}

	b, c := net.Nodes[1], net.Nodes[2]
	activateLazily(t, net, b)
	f, err := os.Open(filepath.Join(b.Data, "root", "vm", "disk.raw"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for _, off := range readAt {
		if _, err := f.ReadAt(buf, int64(off)); err != nil {
			t.Fatalf("read through b's lazy view: %v", err)
		}
	}
	f.Close()
	var trace string
	net.Eventually(30*time.Second, "b's access trace in c's catalogue", func() bool {
		sts, err := c.Client.Activations(ctx)
		if err != nil {
			return false
		}
		for _, st := range sts {
			if st.Host == b.Node().ID().String() && st.CID == res.Layer.CID && st.Trace != "" {
				trace = st.Trace
				return true
			}
		}
		return false
	})
	if _, err := cid.Decode(trace); err != nil {
		t.Fatalf("trace %q: %v", trace, err)
	}

	activateLazily(t, net, c)
	net.Eventually(60*time.Second, "vm:1 complete on c", func() bool {
		ls, err := c.Client.Layers(ctx)
		return err == nil && len(ls) == 1 && ls[0].State == chunk.Complete
	})
	order.mu.Lock()
	defer order.mu.Unlock()
	last := -1
	for _, id := range read {
		k := slices.Index(order.ids, id)
		if k < 0 {
			t.Fatalf("chunk %s read on b was never stored on c", id)
		}
		last = max(last, k)
	}
	for k, id := range order.ids[:last] {
		if id != trace && !near[id] {
			t.Fatalf("c stored chunk %s (its %dth) before the last chunk b read (its %dth): not from b's trace", id, k, last)
		}
	}
	t.Logf("c stored the %d chunks b read among its first %d of %d", len(read), last+1, len(order.ids))
}

// activateLazily activates vm:1 at /vm on nd alone, lazily, and waits
// until it is active there.
func activateLazily(t *testing.T, net *testnet.Net, nd *testnet.Node) {
	t.Helper()
	res, err := nd.Client.Activate(ctx, api.ActivateRequest{Layer: "vm:1", At: "/vm", Hosts: "self", Lazy: true, Op: api.OpActivate})
	if err != nil {
		t.Fatal(err)
	}
	settled(t, net, res, "vm:1", api.StateActive, nd)
}

// Reads through a lazy view while a holder corrupts what it serves: every
// read returns the image's bytes (or fails with EIO), never the liar's,
// and the liar ends up disconnected.
func TestLazyReadsWithALyingPeer(t *testing.T) {
	if err := expose.OverlayWorks(t.TempDir()); err != nil {
		t.Skipf("overlay mounts unavailable here: %v", err)
	}
	if err := fuseview.Works(t.TempDir()); err != nil {
		t.Skipf("FUSE unavailable here: %v", err)
	}
	net := testnet.New(t, 3, testnet.WithConfig(func(i int, cfg *node.Config) {
		cfg.Expose = api.ModeFUSE
		if i == 1 {
			cfg.Faults = &faults.Faults{CorruptServe: true}
		}
	}))
	img := image(t, 16<<20, 8)
	twoHolders(t, net, "vm:1", img) // the liar (node 1) holds the same layer
	activateLazily(t, net, net.Nodes[2])
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(net.Nodes[2].Data, "root", "vm", "disk.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	good := 0
	for k := range 32 {
		off := int64(k) * (int64(len(data)) - int64(len(buf))) / 31
		n, err := f.ReadAt(buf, off)
		if err != nil {
			continue // EIO is allowed; wrong bytes are not
		}
		if string(buf[:n]) != string(data[off:off+int64(n)]) {
			t.Fatalf("read at %d returned bytes that are not the image's", off)
		}
		good++
	}
	liar := net.Nodes[1].Node().ID().String()
	net.Eventually(30*time.Second, "the lying peer disconnected from node 2", func() bool {
		ps, _ := net.Nodes[2].Client.Peers(ctx)
		for _, p := range ps {
			if p.PeerID == liar {
				return false
			}
		}
		return true
	})
	t.Logf("%d of 32 reads returned the image's bytes, the rest EIO", good)
}
