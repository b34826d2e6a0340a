package node

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/p2pimg/p2pimg/node/api"
)

// probeProto answers `p2pimg doctor`'s questions of a peer: the asker
// opens a stream and reads one JSON probeAnswer (nothing is sent). Only
// cluster members reach it (the gater), and it reveals only digests.
const probeProto = protocol.ID("/p2pimg/probe/1.0.0")

// probeTimeout bounds one probe; maxProbes bounds the peers probed at
// once, and maxProbed the peers probed by one doctor (keepers always are),
// so that it answers within a few seconds on any fleet.
const (
	probeTimeout = 3 * time.Second
	maxProbes    = 16
	maxProbed    = 64
)

// probeAnswer is what a peer says of itself to a probe.
type probeAnswer struct {
	Time          int64  `json:"time"` // unix nanoseconds, its clock
	Cluster       string `json:"cluster"`
	Members       int    `json:"members"`
	MembersDigest string `json:"members_digest"`
	PSKDigest     string `json:"psk_digest"`
}

// self is this host's probe answer.
func (n *Node) probeSelf() probeAnswer {
	ids := n.cfg.Cluster.MemberIDs()
	strs := make([]string, len(ids))
	for i, id := range ids {
		strs[i] = id.String()
	}
	slices.Sort(strs)
	a := probeAnswer{Time: n.clock().UnixNano(), Cluster: n.cfg.Cluster.Name, Members: len(strs)}
	if len(strs) > 0 {
		a.MembersDigest = digest("p2pimg members v1", []byte(fmt.Sprint(strs)))
	}
	if psk := n.cfg.Cluster.NetworkKey(); psk != nil {
		a.PSKDigest = digest("p2pimg psk v1", psk)
	}
	return a
}

// clock is this host's wall clock as it tells peers (shifted by the
// clock-skew fault in tests, as the keeper's is).
func (n *Node) clock() time.Time {
	if n.cfg.Faults != nil {
		return time.Now().Add(n.cfg.Faults.ClockOffset)
	}
	return time.Now()
}

func digest(domain string, b []byte) string {
	sum := sha256.Sum256(append([]byte(domain+"\n"), b...))
	return hex.EncodeToString(sum[:8])
}

// serveProbe answers one probe stream.
func (n *Node) serveProbe(s network.Stream) {
	defer s.Close()
	s.SetDeadline(time.Now().Add(probeTimeout))
	json.NewEncoder(s).Encode(n.probeSelf())
}

// probe asks p about itself and estimates its clock's offset from ours.
func (n *Node) probe(ctx context.Context, p peer.ID) (api.DoctorPeer, error) {
	out := api.DoctorPeer{ID: p.String()}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	sent := time.Now()
	s, err := n.net.Host.NewStream(network.WithAllowLimitedConn(ctx, "probe"), p, probeProto)
	if err != nil {
		return out, fmt.Errorf("probe: %w", err)
	}
	defer s.Close()
	if d, ok := ctx.Deadline(); ok {
		s.SetDeadline(d)
	}
	var a probeAnswer
	if err := json.NewDecoder(io.LimitReader(s, 4096)).Decode(&a); err != nil {
		s.Reset()
		return out, fmt.Errorf("probe answer: %w (an older p2pimg without the probe protocol?)", err)
	}
	got := time.Now()
	rtt := got.Sub(sent)
	mid := sent.Add(rtt / 2)
	out.RTTMillis = float64(rtt.Microseconds()) / 1000
	out.ClockOffsetMillis = float64(time.Unix(0, a.Time).Sub(mid).Microseconds()) / 1000
	out.Cluster, out.Members, out.MembersDigest, out.PSKDigest = a.Cluster, a.Members, a.MembersDigest, a.PSKDigest
	return out, nil
}

// Doctor probes the connected peers and the keepers, and lists the
// members never seen, the hosts refused and the peers not reachable.
func (n *Node) Doctor(ctx context.Context) (*api.Doctor, error) {
	me := n.probeSelf()
	d := &api.Doctor{Time: time.Now().UTC(), Self: n.ID().String(), Cluster: me.Cluster, Members: me.Members,
		MembersDigest: me.MembersDigest, PSKDigest: me.PSKDigest, Peers: []api.DoctorPeer{}, NeverSeen: []string{},
		Refused: n.net.Gater.Seen.Refused(), DialFailures: []api.DialFailure{}}
	hosts := n.hostInfo()
	targets := map[peer.ID]bool{}
	for _, k := range n.cfg.Cluster.KeeperIDs() {
		if k != n.ID() {
			targets[k] = true
		}
	}
	peers := n.net.Host.Network().Peers()
	slices.Sort(peers)
	for _, p := range peers {
		if len(targets) >= maxProbed && !targets[p] {
			d.Unprobed++
			continue
		}
		targets[p] = true
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxProbes)
	for p := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			dp, err := n.probe(ctx, p)
			if err != nil {
				dp.Error = err.Error()
			}
			dp.Keeper = n.cfg.Cluster.IsKeeper(p)
			dp.Connected = len(n.net.Host.Network().ConnsToPeer(p)) > 0
			dp.Name = hosts[p.String()].Name
			mu.Lock()
			d.Peers = append(d.Peers, dp)
			mu.Unlock()
		}()
	}
	wg.Wait()
	slices.SortFunc(d.Peers, func(a, b api.DoctorPeer) int { return cmp.Compare(a.ID, b.ID) })
	connected := map[peer.ID]bool{}
	for _, p := range peers {
		connected[p] = true
	}
	for _, m := range n.cfg.Cluster.MemberIDs() {
		if _, known := hosts[m.String()]; !known && !targets[m] && !connected[m] {
			d.NeverSeen = append(d.NeverSeen, m.String())
		}
	}
	slices.Sort(d.NeverSeen)
	for _, f := range n.net.Gater.Seen.DialFailures() {
		if id, err := peer.Decode(f.ID); err == nil && len(n.net.Host.Network().ConnsToPeer(id)) == 0 {
			d.DialFailures = append(d.DialFailures, f)
		}
	}
	return d, nil
}
