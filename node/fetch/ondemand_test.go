package fetch

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/badgerstore"
	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/node/faults"
	"github.com/p2pimg/p2pimg/node/gossip"
	"github.com/p2pimg/p2pimg/node/p2p"
	"github.com/p2pimg/p2pimg/node/xchg"
)

// demandHost is one host of an on-demand test: a real libp2p host on
// 127.0.0.1, a real badger store in a temp dir, and its fetcher.
type demandHost struct {
	net *p2p.Net
	db  *badgerstore.DB
	fr  *Fetcher
	reg *prometheus.Registry
}

func newDemandHost(t *testing.T) *demandHost {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	db, err := badgerstore.Open(filepath.Join(t.TempDir(), "store"), log)
	if err != nil {
		t.Fatal(err)
	}
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	net, err := p2p.Open(key, []string{"/ip4/127.0.0.1/tcp/0"}, cluster.Default(), log)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	fr := New(Config{Host: net.Host, Store: db, Catalog: gossip.NewCatalog(), Gater: net.Gater, Stats: net.Stats,
		Pins: noPins{}, Log: log, StallTimeout: time.Minute, Reg: reg, Conduct: p2p.NewConduct(net.Host, net.Gater, log, reg)})
	// The chunks fetched on demand are stored after their reads return:
	// the store closes once they are.
	t.Cleanup(func() { net.Host.Close(); fr.Wait(); db.Close() })
	return &demandHost{net: net, db: db, fr: fr, reg: reg}
}

// serve runs an exchange server on h with the given per-peer stream limit
// (0: the default) until the test ends.
func (h *demandHost) serve(t *testing.T, maxStreams int) {
	t.Helper()
	h.serveWith(t, xchg.ServerConfig{MaxStreams: maxStreams})
}

// serveWith runs an exchange server on h configured as cfg (its host,
// source, log, stats and registry are h's) until the test ends.
func (h *demandHost) serveWith(t *testing.T, cfg xchg.ServerConfig) {
	t.Helper()
	cfg.Host, cfg.Log, cfg.Stats, cfg.Reg = h.net.Host, slog.New(slog.DiscardHandler), h.net.Stats, h.reg
	cfg.Source = struct {
		*badgerstore.DB
		*Fetcher
	}{h.db, h.fr}
	srv := xchg.NewServer(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { srv.Run(ctx); close(stopped) }()
	t.Cleanup(func() { cancel(); <-stopped })
	waitFor(t, 10*time.Second, "the exchange handler registered", func() bool {
		return slices.Contains(h.net.Host.Mux().Protocols(), xchg.Proto)
	})
}

// metric is the value of counter name in h's registry (0 when absent).
func (h *demandHost) metric(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

// connect connects h to s.
func (h *demandHost) connect(t *testing.T, s *demandHost) {
	t.Helper()
	s0 := s.net.Host
	if err := h.net.Host.Connect(context.Background(), peer.AddrInfo{ID: s0.ID(), Addrs: s0.Addrs()}); err != nil {
		t.Fatal(err)
	}
}

// putChunks stores n distinct random chunks of size bytes on h.
func (h *demandHost) putChunks(t *testing.T, n, size int) map[cid.Cid][]byte {
	t.Helper()
	out := map[cid.Cid][]byte{}
	var blocks []chunk.Block
	for range n {
		data := make([]byte, size)
		rand.Read(data)
		b, err := chunk.Sum(data, chunk.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		out[b.CID()] = data
		blocks = append(blocks, b)
	}
	if err := h.db.PutUncached(context.Background(), blocks...); err != nil {
		t.Fatal(err)
	}
	return out
}

// waitFor waits until cond holds, failing the test after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not after %s: %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

const refusedMetric = "p2pimg_xchg_streams_refused_total"

// Many reads of a lazy view at once (qemu-img convert -m 16 reads 16
// requests of several chunks each) ask one peer for many chunks at once:
// every one gets its chunk, and the peer never has to refuse a stream
// (it resets those past its per-peer limit).
func TestFetchChunkManyAtOnce(t *testing.T) {
	t.Parallel()
	server, client := newDemandHost(t), newDemandHost(t)
	server.serve(t, 0)
	chunks := server.putChunks(t, 64, 256<<10)
	client.connect(t, server)
	layer := chunk.ManifestCID([]byte("a layer"))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	began := time.Now()
	defer func() { t.Logf("%d chunks of 256 KiB in %s", len(chunks), time.Since(began)) }()
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, len(chunks))
	for id, want := range chunks {
		wg.Go(func() {
			<-start
			got, err := client.fr.FetchChunk(ctx, layer, id)
			switch {
			case err != nil:
				errs <- err
			case string(got) != string(want):
				errs <- fmt.Errorf("chunk %s: wrong bytes", id)
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		if failed++; failed <= 3 {
			t.Error(err)
		}
	}
	if failed > 0 {
		t.Fatalf("%d of %d concurrent on-demand fetches failed", failed, len(chunks))
	}
	if n := server.metric(t, refusedMetric); n != 0 {
		t.Errorf("the serving peer refused %v streams: on-demand fetches opened more than it admits", n)
	}
}

// A peer that refuses a stream (it has as many open as it admits) is
// asked again, after a short wait, until the read's deadline: a read
// fails only when no peer supplies the chunk in time.
func TestFetchChunkRetriesRefusedStreams(t *testing.T) {
	t.Parallel()
	server, client := newDemandHost(t), newDemandHost(t)
	server.serve(t, 1) // one stream per peer: a second one is reset at once
	chunks := server.putChunks(t, 2, 4<<10)
	client.connect(t, server)
	layer := chunk.ManifestCID([]byte("a layer"))
	var ids []cid.Cid
	for id := range chunks {
		ids = append(ids, id)
	}

	// The client's one admitted stream, kept busy elsewhere: it answered,
	// so the server counts it.
	held, err := xchg.Dial(context.Background(), client.net.Host, server.net.Host.ID())
	if err != nil {
		t.Fatal(err)
	}
	if err := held.RequestChunks(ids[:1]); err != nil {
		t.Fatal(err)
	}
	if err := held.Flush(); err != nil {
		t.Fatal(err)
	}
	held.SetReadTimeout(10 * time.Second)
	if st, _, err := held.ReadChunk(chunk.MaxChunkSize, nil); err != nil || st != xchg.StatusOK {
		t.Fatalf("the held stream's request: status %d, %v", st, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	type answer struct {
		data []byte
		err  error
	}
	got := make(chan answer, 1)
	go func() {
		data, err := client.fr.FetchChunk(ctx, layer, ids[1])
		got <- answer{data, err}
	}()
	// Refused twice, the fetch still waits (it used to fail at the first).
	var early *answer
	waitFor(t, 10*time.Second, "the server refused the on-demand fetch's streams twice", func() bool {
		select {
		case a := <-got:
			early = &a
			return true
		default:
			return server.metric(t, refusedMetric) >= 2
		}
	})
	if early != nil {
		t.Fatalf("on-demand fetch ended while the peer refused its streams (%v refused): %v", server.metric(t, refusedMetric), early.err)
	}
	held.Close() // the server admits a stream again
	a := <-got
	if a.err != nil {
		t.Fatalf("on-demand fetch from a peer that refused streams for a while: %v", a.err)
	}
	if string(a.data) != string(chunks[ids[1]]) {
		t.Fatal("on-demand fetch returned the wrong bytes")
	}
}

// A peer that serves bad bytes is blocked and disconnected at its first
// answer, and never asked again while the read retries: the read fails
// (EIO for a view) rather than return its bytes.
func TestFetchChunkBlocksALiar(t *testing.T) {
	t.Parallel()
	liar, client := newDemandHost(t), newDemandHost(t)
	liar.serveWith(t, xchg.ServerConfig{Faults: &faults.Faults{CorruptServe: true}})
	chunks := liar.putChunks(t, 1, 4<<10)
	client.connect(t, liar)
	layer := chunk.ManifestCID([]byte("a layer"))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for id := range chunks {
		data, err := client.fr.FetchChunk(ctx, layer, id)
		if err == nil {
			t.Fatalf("on-demand fetch from a lying peer returned %d bytes", len(data))
		}
		if !errors.Is(err, chunk.ErrHashMismatch) {
			t.Errorf("error %v; want it to wrap chunk.ErrHashMismatch", err)
		}
	}
	if client.net.Gater.Allowed(liar.net.Host.ID()) {
		t.Error("the lying peer is not blocked")
	}
	if n := liar.metric(t, "p2pimg_chunks_served_total"); n != 1 {
		t.Errorf("the liar served %v chunks; want 1 (not asked again after its bad answer)", n)
	}
}
