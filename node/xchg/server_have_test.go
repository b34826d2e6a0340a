package xchg

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/node/p2p"
)

// source serves one layer of 10 chunks: chunks 0 and 2 at first, then
// notes that 5 arrived and that it asks a seed for 7, then it stops.
type source struct{ id cid.Cid }

func (s source) ManifestBytes(context.Context, cid.Cid) ([]byte, error) {
	return nil, chunk.ErrNotFound
}
func (s source) GetInto(context.Context, cid.Cid, []byte) ([]byte, error) {
	return nil, chunk.ErrNotFound
}
func (s source) HaveBitmap(_ context.Context, id cid.Cid) ([]byte, error) {
	if !id.Equals(s.id) {
		return nil, chunk.ErrNotFound
	}
	return PackBits([]bool{true, false, true, false, false, false, false, false, false, false}), nil
}

// watching adds the have-watch protocol.
type watching struct{ source }

func (w watching) WatchHave(ctx context.Context, id cid.Cid, bitmap func([]byte) error, notes func([]Note) error) error {
	bm, err := w.HaveBitmap(ctx, id)
	if err != nil {
		return err
	}
	if err := bitmap(bm); err != nil {
		return err
	}
	return notes([]Note{{Index: 1, Kind: NoteState}, {Index: 5, Kind: NoteHave}, {Index: 7, Kind: NoteAsked}, {Index: 0, Kind: NoteState}})
}

func newHost(t *testing.T) host.Host {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster.Config{Name: "t"}
	h, err := p2p.NewHost(key, []string{"/ip4/127.0.0.1/tcp/0"}, c, p2p.NewGater(c, time.Now, slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// serving starts a server for src on a new host and connects a client host.
func serving(t *testing.T, src Source) (client host.Host, server peer.ID) {
	t.Helper()
	a, b := newHost(t), newHost(t)
	ctx, cancel := context.WithCancel(context.Background())
	s := NewServer(ServerConfig{Host: a, Source: src, Log: slog.New(slog.DiscardHandler), Stats: p2p.NewStats(), Reg: prometheus.NewRegistry()})
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := b.Connect(ctx, peer.AddrInfo{ID: a.ID(), Addrs: a.Addrs()}); err != nil {
		t.Fatal(err)
	}
	// The handlers are set by Run: wait until a stream of the exchange opens.
	for deadline := time.Now().Add(10 * time.Second); ; {
		st, err := b.NewStream(ctx, a.ID(), Proto)
		if err == nil {
			st.Reset()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("exchange server never answered: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return b, a.ID()
}

func TestHaveWatch(t *testing.T) {
	t.Parallel()
	id, err := chunk.SumCID([]byte("layer"), chunk.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := chunk.SumCID([]byte("other"), chunk.SHA256)
	ctx := context.Background()

	t.Run("bitmap, notes, end", func(t *testing.T) {
		t.Parallel()
		b, a := serving(t, watching{source{id}})
		hw, has, err := WatchHave(ctx, b, a, id, 10, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer hw.Close()
		if want := []bool{true, false, true, false, false, false, false, false, false, false}; !slices.Equal(has, want) {
			t.Fatalf("bitmap %v, want %v", has, want)
		}
		got := readNotes(t, hw)
		want := []Note{{Index: 1, Kind: NoteState}, {Index: 5, Kind: NoteHave}, {Index: 7, Kind: NoteAsked}, {Index: 0, Kind: NoteState}}
		if !slices.Equal(got, want) {
			t.Fatalf("notes %v, want %v", got, want)
		}
	})
	t.Run("layer absent", func(t *testing.T) {
		t.Parallel()
		b, a := serving(t, watching{source{id}})
		if _, _, err := WatchHave(ctx, b, a, other, 10, 5*time.Second); !errors.Is(err, ErrMissing) {
			t.Fatalf("got %v, want ErrMissing", err)
		}
	})
	t.Run("peer without have-notes", func(t *testing.T) {
		t.Parallel()
		b, a := serving(t, source{id})
		if _, _, err := WatchHave(ctx, b, a, id, 10, 5*time.Second); !errors.Is(err, ErrNoWatch) {
			t.Fatalf("got %v, want ErrNoWatch", err)
		}
	})
}
