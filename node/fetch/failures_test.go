package fetch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/badgerstore"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/node/gossip"
	"github.com/p2pimg/p2pimg/node/p2p"
	"github.com/p2pimg/p2pimg/node/xchg"
)

func TestCauseOf(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want Cause
	}{
		{fmt.Errorf("fetch web:1: %w", context.Canceled), CauseCanceled},
		{fmt.Errorf("fetch web:1: peer x: %w", context.DeadlineExceeded), CauseCanceled},
		{fmt.Errorf("fetch web:1: %w: need 5 MiB, 1 MiB free", chunk.ErrNoSpace), CauseNoSpace},
		{fmt.Errorf("fetch web:1: %w: 3 of 9 chunks still missing", ErrStalled), CauseStalled},
		{fmt.Errorf("fetch web:1: chunk bafk: %w", chunk.ErrHashMismatch), CauseVerify},
		{fmt.Errorf("manifest m: no connected peer has it (0 tried): %w", errors.Join(chunk.ErrNotFound)), CauseNotFound},
		{fmt.Errorf("peer x: %w", errors.Join(fmt.Errorf("bad frame: %w", xchg.ErrProtocol), chunk.ErrNotFound)), CauseNotFound},
		{fmt.Errorf("peer x: %w", xchg.ErrProtocol), CausePeer},
		{fmt.Errorf("peer x: %w", xchg.ErrMissing), CausePeer},
		{errors.New("badger: disk I/O"), CauseOther},
	} {
		if got := CauseOf(tc.err); got != tc.want {
			t.Errorf("CauseOf(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
}

type noPins struct{}

func (noPins) Pin() func() { return func() {} }

// A real fetch with no peer that has the layer counts one not_found
// failure and nothing else.
func TestFetchFailuresCounted(t *testing.T) {
	t.Parallel()
	db, err := badgerstore.Open(filepath.Join(t.TempDir(), "store"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	net, err := p2p.Open(key, []string{"/ip4/127.0.0.1/tcp/0"}, cluster.Default(), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { net.Host.Close() })
	reg := prometheus.NewRegistry()
	fr := New(Config{Host: net.Host, Store: db, Catalog: gossip.NewCatalog(), Gater: net.Gater, Stats: net.Stats,
		Pins: noPins{}, Log: log, StallTimeout: time.Minute, Reg: reg})
	name, _ := chunk.ParseName("web:1")
	absent := chunk.ManifestCID([]byte("a manifest no host has"))
	_, err = fr.Fetch(context.Background(), name, gossip.Mapping{CID: absent.String()}, func(api.Event) {})
	if !errors.Is(err, chunk.ErrNotFound) {
		t.Fatalf("fetch of a layer no peer has: %v; want chunk.ErrNotFound", err)
	}
	for _, c := range causes {
		want := 0.0
		if c == CauseNotFound {
			want = 1
		}
		if got := testutil.ToFloat64(fr.failures.WithLabelValues(string(c))); got != want {
			t.Errorf("p2pimg_fetch_failures_total{cause=%q} = %v, want %v", c, got, want)
		}
	}
}
