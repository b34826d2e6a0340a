package p2p

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/p2pimg/p2pimg/node/api"
)

// Stats counts chunk bytes exchanged with each peer.
type Stats struct {
	mu  sync.Mutex
	in  map[peer.ID]int64
	out map[peer.ID]int64
}

// NewStats returns empty counters.
func NewStats() *Stats {
	return &Stats{in: map[peer.ID]int64{}, out: map[peer.ID]int64{}}
}

// Add counts in bytes received from p and out bytes sent to it.
func (s *Stats) Add(p peer.ID, in, out int64) {
	s.mu.Lock()
	s.in[p] += in
	s.out[p] += out
	s.mu.Unlock()
}

// Get is what was exchanged with p so far.
func (s *Stats) Get(p peer.ID) (in, out int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.in[p], s.out[p]
}

// Peers lists h's connected peers with their addresses, latency and the
// chunk bytes exchanged with each.
func Peers(h host.Host, s *Stats) []api.Peer {
	out := []api.Peer{}
	for _, p := range h.Network().Peers() {
		ap := api.Peer{PeerID: p.String(), LatencyMS: float64(h.Peerstore().LatencyEWMA(p).Microseconds()) / 1000}
		for _, c := range h.Network().ConnsToPeer(p) {
			ap.Addrs = append(ap.Addrs, c.RemoteMultiaddr().String())
		}
		ap.BytesIn, ap.BytesOut = s.Get(p)
		out = append(out, ap)
	}
	slices.SortFunc(out, func(a, b api.Peer) int { return strings.Compare(a.PeerID, b.PeerID) })
	return out
}

// Connected reports whether h has a connection to p.
func Connected(h host.Host, p peer.ID) bool { return len(h.Network().ConnsToPeer(p)) > 0 }

// ShortID is the tail of a peer id, for messages a person reads.
func ShortID(p peer.ID) string {
	s := p.String()
	if len(s) > 12 {
		return "…" + s[len(s)-8:]
	}
	return s
}

// ParseAddrs reads peer multiaddrs (ending in /p2p/ID); bad ones are
// logged and left out.
func ParseAddrs(addrs []string, log *slog.Logger) []peer.AddrInfo {
	var infos []peer.AddrInfo
	for _, s := range addrs {
		a, err := ma.NewMultiaddr(s)
		if err == nil {
			var ai *peer.AddrInfo
			if ai, err = peer.AddrInfoFromP2pAddr(a); err == nil {
				infos = append(infos, *ai)
				continue
			}
		}
		log.Warn("bad --peer address ignored", "addr", s, "err", err)
	}
	return infos
}

// KeepConnected dials peers and redials them when they drop, until ctx
// ends. Cancellation is not an error.
func KeepConnected(ctx context.Context, h host.Host, g *Gater, peers []peer.AddrInfo, log *slog.Logger) error {
	if len(peers) == 0 {
		return nil
	}
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		for _, ai := range peers {
			if h.Network().Connectedness(ai.ID) != network.Connected && g.Allowed(ai.ID) {
				dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				err := h.Connect(dctx, ai)
				if ctx.Err() == nil {
					g.Seen.Dialed(ai, err)
				}
				if err != nil && ctx.Err() == nil {
					log.Debug("peer not reachable", "peer", ai.ID.String(), "err", err)
				}
				cancel()
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// RunMDNS finds peers of cluster name on the LAN and connects to those the
// gater admits, until ctx ends. A host where mDNS cannot start works on
// without it (logged).
func RunMDNS(ctx context.Context, h host.Host, g *Gater, name string, log *slog.Logger) error {
	svc := mdns.NewMdnsService(h, "p2pimg-"+name, mdnsNotifee{ctx, h, g, log})
	if err := svc.Start(); err != nil {
		log.Warn("mdns discovery off", "err", err)
		return nil
	}
	<-ctx.Done()
	return svc.Close()
}

type mdnsNotifee struct {
	ctx context.Context
	h   host.Host
	g   *Gater
	log *slog.Logger
}

func (m mdnsNotifee) HandlePeerFound(ai peer.AddrInfo) {
	if ai.ID == m.h.ID() || !m.g.Allowed(ai.ID) {
		return
	}
	ctx, cancel := context.WithTimeout(m.ctx, 5*time.Second)
	defer cancel()
	if err := m.h.Connect(ctx, ai); err != nil {
		m.log.Debug("mdns peer not reachable", "peer", ai.ID.String(), "err", err)
	}
}
