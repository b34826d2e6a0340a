package xchg

import (
	"bufio"
	"context"
	"encoding/binary"
	"log/slog"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/node/p2p"
)

// emptySource holds nothing: every request is answered "not here".
type emptySource struct{}

func (emptySource) ManifestBytes(context.Context, cid.Cid) ([]byte, error) {
	return nil, chunk.ErrNotFound
}
func (emptySource) HaveBitmap(context.Context, cid.Cid) ([]byte, error) {
	return nil, chunk.ErrNotFound
}
func (emptySource) GetInto(context.Context, cid.Cid, []byte) ([]byte, error) {
	return nil, chunk.ErrNotFound
}

type served struct {
	srv     *Server
	gater   *p2p.Gater
	server  host.Host
	client  host.Host
	stopped chan struct{}
}

// serveFor runs a Server on a real libp2p host on 127.0.0.1 and connects
// a second host (the client) to it.
func serveFor(t *testing.T, cfg ServerConfig) *served {
	t.Helper()
	cc := cluster.Default()
	log := slog.New(slog.DiscardHandler)
	mk := func(g *p2p.Gater) host.Host {
		k, _, _ := crypto.GenerateEd25519Key(nil)
		h, err := p2p.NewHost(k, []string{"/ip4/127.0.0.1/tcp/0"}, cc, g)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		return h
	}
	g := p2p.NewGater(cc, time.Now, log)
	s := &served{gater: g, server: mk(g), client: mk(p2p.NewGater(cc, time.Now, log)), stopped: make(chan struct{})}
	reg := prometheus.NewRegistry()
	cfg.Host, cfg.Source, cfg.Log, cfg.Stats, cfg.Reg = s.server, emptySource{}, log, p2p.NewStats(), reg
	cfg.Conduct = p2p.NewConduct(s.server, g, log, reg)
	s.srv = NewServer(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { s.srv.Run(ctx); close(s.stopped) }()
	t.Cleanup(func() { cancel(); <-s.stopped })
	if err := s.client.Connect(ctx, peer.AddrInfo{ID: s.server.ID(), Addrs: s.server.Addrs()}); err != nil {
		t.Fatal(err)
	}
	return s
}

// stream opens an exchange stream from the client, retrying while the
// server's handler is not registered yet.
func (s *served) stream(t *testing.T) network.Stream {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := s.client.NewStream(context.Background(), s.server.ID(), Proto)
		if err == nil {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Every kind of broken frame is a violation: the stream is reset, the
// violation counted, and the peer blocked and disconnected at the third.
func TestServerCountsViolations(t *testing.T) {
	t.Parallel()
	s := serveFor(t, ServerConfig{})
	frames := map[string][]byte{
		"oversized request": binary.AppendUvarint([]byte{ReqChunks}, maxReqPayload+1),
		"truncated request": append(binary.AppendUvarint([]byte{ReqManifest}, 100), "short"...),
		"garbage chunk ids": append(binary.AppendUvarint([]byte{ReqChunks}, 5), 0x02, 0xff, 0xff, 0xff, 0xff),
	}
	n := 0
	for name, frame := range frames {
		st := s.stream(t)
		st.Write(frame)
		st.CloseWrite()
		if _, err := bufio.NewReader(st).ReadByte(); err == nil {
			t.Errorf("%s: the server answered", name)
		}
		st.Reset()
		n++
		want := float64(n)
		deadline := time.Now().Add(10 * time.Second)
		for testutil.ToFloat64(s.srv.cfg.Conduct.Violations("serve")) < want && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if got := testutil.ToFloat64(s.srv.cfg.Conduct.Violations("serve")); got != want {
			t.Fatalf("%s: %v violations counted, want %v", name, got, want)
		}
	}
	if s.gater.Allowed(s.client.ID()) {
		t.Fatal("a peer with three violations is not blocked")
	}
	deadline := time.Now().Add(10 * time.Second)
	for p2p.Connected(s.server, s.client.ID()) {
		if time.Now().After(deadline) {
			t.Fatal("a blocked peer is still connected")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A peer gets at most MaxStreams streams at once (more are reset at once
// and counted), and requests beyond its rate wait (counted) but are answered.
func TestServerPerPeerLimits(t *testing.T) {
	t.Parallel()
	s := serveFor(t, ServerConfig{MaxStreams: 2, RequestRate: 20, RequestBurst: 1})
	ask := func(st network.Stream, br *bufio.Reader) error {
		bw := bufio.NewWriter(st)
		id, _ := chunk.SumCID([]byte("x"), chunk.SHA256)
		WriteReq(bw, ReqManifest, id.Bytes())
		if err := bw.Flush(); err != nil {
			return err
		}
		_, _, err := ReadItem(br, 1<<20, nil)
		return err
	}
	var open []network.Stream
	for i := range 2 {
		st := s.stream(t)
		defer st.Reset()
		if err := ask(st, bufio.NewReader(st)); err != nil {
			t.Fatalf("stream %d: %v", i+1, err)
		}
		open = append(open, st)
	}
	third := s.stream(t)
	defer third.Reset()
	if err := ask(third, bufio.NewReader(third)); err == nil {
		t.Fatal("a third stream at once was served")
	}
	if got := testutil.ToFloat64(s.srv.refused); got != 1 {
		t.Fatalf("refused streams: %v", got)
	}
	br := bufio.NewReader(open[0])
	for i := range 5 { // at 20/s with a burst of 1, some wait
		if err := ask(open[0], br); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	if testutil.ToFloat64(s.srv.throttled) == 0 {
		t.Fatal("no request was held back past the rate")
	}
}
