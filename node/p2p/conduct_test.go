package p2p

import (
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/p2pimg/p2pimg/node/cluster"
)

// Violations block a peer past the threshold (within the window only);
// failing streams stop new ones for a backoff that a working stream ends;
// unserved claims rank a peer down until it serves.
func TestConduct(t *testing.T) {
	t.Parallel()
	key, _, _ := crypto.GenerateEd25519Key(nil)
	cc := cluster.Default()
	now := time.Unix(1e9, 0)
	g := NewGater(cc, func() time.Time { return now }, slog.New(slog.DiscardHandler))
	h, err := NewHost(key, []string{"/ip4/127.0.0.1/tcp/0"}, cc, g)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	c := NewConduct(h, g, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	c.now = func() time.Time { return now }
	p := peer.ID("peer-a")
	bad := errors.New("garbage")

	for range ViolationLimit - 1 {
		if c.Violation(p, "serve", bad) {
			t.Fatal("blocked before the threshold")
		}
	}
	now = now.Add(ViolationWindow + time.Second) // those age out
	for range ViolationLimit - 1 {
		if c.Violation(p, "fetch", bad) {
			t.Fatal("violations outside the window counted")
		}
	}
	if !c.Violation(p, "fetch", bad) {
		t.Fatal("not blocked at the threshold")
	}
	// The gater checks membership first: an open cluster admits all.
	if g.Allowed(p) {
		t.Fatal("the gater still admits a blocked peer")
	}

	q := peer.ID("peer-b")
	for range FailureLimit - 1 {
		c.StreamFailed(q)
	}
	if !c.MayOpen(q) {
		t.Fatal("backoff before the failure limit")
	}
	c.StreamFailed(q)
	if c.MayOpen(q) {
		t.Fatal("a peer whose streams keep failing gets new ones")
	}
	now = now.Add(maxBackoff)
	if !c.MayOpen(q) {
		t.Fatal("no retry after the backoff")
	}
	c.StreamFailed(q)
	c.StreamWorked(q)
	if !c.MayOpen(q) {
		t.Fatal("a working stream did not end the backoff")
	}

	c.Missed(q)
	c.Missed(q)
	c.Missed(q)
	if c.Misses(q) != 3 || c.Misses(p) != 0 {
		t.Fatalf("misses %d %d", c.Misses(q), c.Misses(p))
	}
	c.Served(q)
	if c.Misses(q) != 1 {
		t.Fatalf("serving did not halve the misses: %d", c.Misses(q))
	}
}
