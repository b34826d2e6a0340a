package activate

import (
	"crypto/rand"
	"path/filepath"
	"testing"

	"github.com/libp2p/go-libp2p"
	lcrypto "github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/node/gossip"
)

func newID(t *testing.T) peer.ID {
	t.Helper()
	_, pub, err := lcrypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// An activation merged while its signer was an operator is no longer
// obeyed once a reload removed that operator; this host's own and a
// host's activations of itself stay.
func TestSignerStillAllowed(t *testing.T) {
	h, err := libp2p.New(libp2p.NoListenAddrs)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	op, other := newID(t), newID(t)
	c, err := cluster.New("t", nil, []string{op.String()})
	if err != nil {
		t.Fatal(err)
	}
	r := &Reconciler{cfg: Config{Host: h, Cluster: c}}
	byOp := gossip.Activation{Layer: "a:1", Hosts: "*", Signer: op.String()}
	own := gossip.Activation{Layer: "a:1", Hosts: h.ID().String(), Signer: h.ID().String()}
	itself := gossip.Activation{Layer: "a:1", Hosts: other.String(), Signer: other.String()}
	byOther := gossip.Activation{Layer: "a:1", Hosts: "*", Signer: other.String()}
	for _, tc := range []struct {
		a    gossip.Activation
		want bool
	}{{byOp, true}, {own, true}, {itself, true}, {byOther, false}} {
		if got := r.signerStillAllowed(tc.a); got != tc.want {
			t.Errorf("before the reload, signed by %s for %s: %v, want %v", tc.a.Signer, tc.a.Hosts, got, tc.want)
		}
	}
	next, err := cluster.New("t", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	next.PSK = c.PSK // as a reloaded file keeps it
	next, err = reparse(t, next)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Apply(next); err != nil {
		t.Fatal(err)
	}
	if r.signerStillAllowed(byOp) {
		t.Error("an activation by an operator removed by the reload is still obeyed")
	}
	if !r.signerStillAllowed(own) || !r.signerStillAllowed(itself) {
		t.Error("a host's activation of itself is no longer obeyed after the reload")
	}
}

// reparse writes c as a cluster file and loads it.
func reparse(t *testing.T, c *cluster.Config) (*cluster.Config, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cluster.toml")
	if err := c.Write(p); err != nil {
		return nil, err
	}
	return cluster.Load(p)
}
