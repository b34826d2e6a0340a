package fetch

import (
	"log/slog"
	"slices"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/p2pimg/p2pimg/node/p2p"
)

// Peers that claimed layers and did not serve them are asked last (the
// order among the others kept), and get a short manifest timeout.
func TestUnservedClaimsAskedLast(t *testing.T) {
	t.Parallel()
	c := p2p.NewConduct(nil, nil, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	fr := &Fetcher{cfg: Config{Conduct: c}}
	a, b, liar, d := peer.ID("a"), peer.ID("b"), peer.ID("liar"), peer.ID("d")
	c.Missed(liar)
	c.Missed(liar)
	got := fr.byMisses([]peer.ID{liar, a, b, d})
	if want := []peer.ID{a, b, d, liar}; !slices.Equal(got, want) {
		t.Fatalf("order %v, want %v", got, want)
	}
	if fr.manifestTimeout(liar) != quickManifestTimeout || fr.manifestTimeout(a) != readTimeout {
		t.Fatalf("timeouts: liar %v, honest %v", fr.manifestTimeout(liar), fr.manifestTimeout(a))
	}
	c.Served(liar)
	c.Served(liar)
	if fr.manifestTimeout(liar) != readTimeout {
		t.Fatal("a peer that serves again keeps the short timeout")
	}
}
