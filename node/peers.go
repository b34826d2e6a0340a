package node

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
)

// peerStats counts chunk bytes exchanged with each peer.
type peerStats struct {
	mu  sync.Mutex
	in  map[peer.ID]int64
	out map[peer.ID]int64
}

func newPeerStats() *peerStats {
	return &peerStats{in: map[peer.ID]int64{}, out: map[peer.ID]int64{}}
}

func (s *peerStats) add(p peer.ID, in, out int64) {
	s.mu.Lock()
	s.in[p] += in
	s.out[p] += out
	s.mu.Unlock()
}

func (s *peerStats) get(p peer.ID) (in, out int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.in[p], s.out[p]
}

// Identity is this node's peer id and addresses.
func (n *Node) Identity() api.Identity {
	return api.Identity{PeerID: n.host.ID().String(), Addrs: n.Addrs(), Cluster: n.cfg.Cluster.Name, Open: n.cfg.Cluster.Open()}
}

// Peers lists the connected peers.
func (n *Node) Peers() []api.Peer {
	out := []api.Peer{}
	for _, p := range n.host.Network().Peers() {
		ap := api.Peer{PeerID: p.String(), LatencyMS: float64(n.host.Peerstore().LatencyEWMA(p).Microseconds()) / 1000}
		for _, c := range n.host.Network().ConnsToPeer(p) {
			ap.Addrs = append(ap.Addrs, c.RemoteMultiaddr().String())
		}
		ap.BytesIn, ap.BytesOut = n.stats.get(p)
		out = append(out, ap)
	}
	slices.SortFunc(out, func(a, b api.Peer) int { return strings.Compare(a.PeerID, b.PeerID) })
	return out
}

// Catalog is the cluster's view of every layer, with who holds it.
func (n *Node) Catalog() []api.ClusterLayer {
	out := []api.ClusterLayer{}
	local := map[string]bool{}
	if ls, err := n.db.Layers(context.Background()); err == nil {
		for _, l := range ls {
			if l.State == chunk.Complete {
				local[l.CID] = true
			} else if _, ok := local[l.CID]; !ok {
				local[l.CID] = false
			}
		}
	}
	for _, m := range n.catalog.all() {
		cl := api.ClusterLayer{Name: m.Name, CID: m.CID, Size: m.Size, Publisher: m.Publisher, Product: m.Product,
			Published: time.Unix(0, m.Published).UTC(), Holders: map[string]string{}}
		state := func(complete bool) string {
			if complete {
				return "complete"
			}
			return "partial"
		}
		for p, complete := range n.catalog.holdings(m.CID) {
			cl.Holders[p.String()] = state(complete)
		}
		if complete, ok := local[m.CID]; ok {
			cl.Holders[n.host.ID().String()] = state(complete)
		}
		out = append(out, cl)
	}
	return out
}

// Partition cuts this host off from the given peers (and only them): open
// connections close and new ones are refused until the next Partition.
// An empty list heals. It is how a testnet partitions hosts on loopback.
func (n *Node) Partition(ids []string) error {
	var ps []peer.ID
	for _, s := range ids {
		p, err := peer.Decode(s)
		if err != nil {
			return badRequestf("partition: %q is not a peer id", s)
		}
		ps = append(ps, p)
	}
	n.gater.partition(ps)
	for _, p := range ps {
		n.host.Network().ClosePeer(p)
		n.catalog.forget(p)
	}
	n.log.Info("partition set", "cut_off", len(ps))
	return nil
}
