package node

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/p2pimg/p2pimg/chunk"
)

func (n *Node) topicName() string { return "p2pimg/" + n.cfg.Cluster.Name + "/catalog/1" }

// scoreParams penalise peers that send invalid gossip and peers this node
// caught sending bad chunks. IP colocation is not penalised: a testnet
// runs every host on 127.0.0.1.
func (n *Node) scoreParams() (*pubsub.PeerScoreParams, *pubsub.PeerScoreThresholds) {
	return &pubsub.PeerScoreParams{
			Topics: map[string]*pubsub.TopicScoreParams{n.topicName(): {
				TopicWeight:                    1,
				TimeInMeshQuantum:              time.Second,
				InvalidMessageDeliveriesWeight: -100,
				InvalidMessageDeliveriesDecay:  0.5,
			}},
			AppSpecificScore: func(p peer.ID) float64 {
				if !n.gater.allowed(p) {
					return -1000
				}
				return 0
			},
			AppSpecificWeight: 1,
			DecayInterval:     time.Second,
			DecayToZero:       0.01,
			RetainScore:       10 * time.Minute,
		}, &pubsub.PeerScoreThresholds{
			GossipThreshold: -10, PublishThreshold: -50, GraylistThreshold: -80,
			AcceptPXThreshold: 10, OpportunisticGraftThreshold: 3,
		}
}

// Run starts gossip, the announcer and peer connections, and runs until ctx
// ends. Cancellation is not an error.
func (n *Node) Run(ctx context.Context) error {
	sp, st := n.scoreParams()
	ps, err := pubsub.NewGossipSub(ctx, n.host,
		pubsub.WithMessageSigning(true),
		pubsub.WithStrictSignatureVerification(true),
		pubsub.WithFloodPublish(true),
		pubsub.WithPeerScore(sp, st),
		pubsub.WithMaxMessageSize(maxSnapshotBytes+4096),
	)
	if err != nil {
		return fmt.Errorf("gossipsub: %w", err)
	}
	n.ps = ps
	if err := ps.RegisterTopicValidator(n.topicName(), n.validate); err != nil {
		return err
	}
	if n.topic, err = ps.Join(n.topicName()); err != nil {
		return err
	}
	sub, err := n.topic.Subscribe()
	if err != nil {
		return err
	}
	defer sub.Cancel()
	if err := n.loadCatalog(ctx); err != nil {
		return err
	}
	// A new connection gets our snapshot at once: a late joiner catches up.
	n.host.Network().Notify(&network.NotifyBundle{
		ConnectedF: func(network.Network, network.Conn) { n.announceSoon() },
	})
	var wg sync.WaitGroup
	if len(n.cfg.Cluster.keepers) > 0 {
		stop, err := n.runSeats(ctx, ps, &wg)
		if err != nil {
			return err
		}
		defer stop()
	}
	wg.Go(func() { n.receive(ctx, sub) })
	wg.Go(func() { n.announcer(ctx) })
	if n.cfg.TestGossipFlood {
		wg.Go(func() {
			for seq := time.Now().UnixNano(); ctx.Err() == nil; seq++ {
				if s, err := n.snapshot(ctx); err == nil {
					s.Seq = seq
					b, _ := json.Marshal(s)
					n.topic.Publish(ctx, b)
				}
			}
		})
	}
	wg.Go(func() { n.keepConnected(ctx) })
	wg.Go(func() { n.reconciler(ctx) })
	wg.Go(func() { n.policySyncer(ctx) })
	if n.cfg.MDNS {
		svc := mdns.NewMdnsService(n.host, "p2pimg-"+n.cfg.Cluster.Name, mdnsNotifee{n, ctx})
		if err := svc.Start(); err != nil {
			n.log.Warn("mdns discovery off", "err", err)
		} else {
			defer svc.Close()
		}
	}
	<-ctx.Done()
	wg.Wait()
	return nil
}

// runSeats starts this host's keeper (when it is one), the seat gossip
// and the lease renewer. stop shuts the keeper down after the goroutines
// in wg ended.
func (n *Node) runSeats(ctx context.Context, ps *pubsub.PubSub, wg *sync.WaitGroup) (stop func(), err error) {
	if n.cfg.Cluster.IsKeeper(n.host.ID()) {
		k, err := n.startKeeper()
		if err != nil {
			return nil, err
		}
		n.keeper.Store(k)
		wg.Go(func() { k.run(ctx) })
	}
	stop = func() {
		wg.Wait()
		if k := n.keeper.Swap(nil); k != nil {
			if err := k.close(); err != nil {
				n.log.Warn("keeper shutdown", "err", err)
			}
		}
	}
	fail := func(err error) (func(), error) {
		if k := n.keeper.Swap(nil); k != nil {
			k.close()
		}
		return nil, err
	}
	if err := ps.RegisterTopicValidator(n.seatTopicName(), n.validateSeats); err != nil {
		return fail(err)
	}
	topic, err := ps.Join(n.seatTopicName())
	if err != nil {
		return fail(err)
	}
	sub, err := topic.Subscribe()
	if err != nil {
		return fail(err)
	}
	wg.Go(func() { defer sub.Cancel(); n.seatGossip(ctx, topic, sub) })
	wg.Go(func() { n.renewer(ctx) })
	return stop, nil
}

// validate is the gossip validator: strict schema and size, signer a
// member, every mapping signed by an allowed publisher, no replays.
func (n *Node) validate(_ context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	origin := msg.GetFrom()
	if !n.cfg.Cluster.IsMember(origin) {
		n.log.Warn("gossip from a non-member rejected", "origin", origin.String(), "via", from.String())
		return pubsub.ValidationReject
	}
	s, err := decodeSnapshot(msg.Data, n.cfg.Cluster)
	if err != nil {
		n.log.Warn("gossip rejected", "origin", origin.String(), "err", err)
		return pubsub.ValidationReject
	}
	res := n.catalog.admit(origin, s.Seq, time.Now())
	if res == pubsub.ValidationAccept {
		msg.ValidatorData = s
	}
	return res
}

func (n *Node) receive(ctx context.Context, sub *pubsub.Subscription) {
	for {
		msg, err := sub.Next(ctx)
		if err != nil {
			return
		}
		if s, ok := msg.ValidatorData.(*snapshot); ok && msg.GetFrom() != n.host.ID() {
			n.catalog.apply(msg.GetFrom(), s, time.Now())
			if len(s.Activations) > 0 {
				n.reconcileSoon()
			}
		}
	}
}

func (n *Node) reconcileSoon() {
	select {
	case n.actKick <- struct{}{}:
	default:
	}
}

// setStates records this host's state for a layer.
func (n *Node) setStates(st HostState) {
	n.stMu.Lock()
	n.states[st.Layer] = st
	n.stMu.Unlock()
}

func (n *Node) announceSoon() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// announcer gossips this node's snapshot on every change and on an interval.
func (n *Node) announcer(ctx context.Context) {
	t := time.NewTicker(n.cfg.AnnounceInterval)
	defer t.Stop()
	var seq int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-n.kick:
		}
		s, err := n.snapshot(ctx)
		if err != nil {
			n.log.Warn("announce", "err", err)
			continue
		}
		s.Seq = max(time.Now().UnixNano(), seq+1)
		seq = s.Seq
		b, err := json.Marshal(s)
		if err == nil {
			err = n.topic.Publish(ctx, b)
		}
		if err != nil && ctx.Err() == nil {
			n.log.Warn("announce", "err", err)
		}
	}
}

// snapshot is what this node knows and holds.
func (n *Node) snapshot(ctx context.Context) (*snapshot, error) {
	ls, err := n.db.Layers(ctx)
	if err != nil {
		return nil, err
	}
	s := &snapshot{Mappings: n.catalog.all(), Activations: n.catalog.activations(), Labels: n.cfg.Labels}
	n.policies.mu.Lock()
	s.HostPolicy = n.policies.raw
	n.policies.mu.Unlock()
	n.stMu.Lock()
	for _, st := range n.states {
		s.States = append(s.States, st)
	}
	n.stMu.Unlock()
	seen := map[string]bool{}
	for _, l := range ls {
		if !seen[l.CID] {
			seen[l.CID] = true
			s.Holdings = append(s.Holdings, Holding{CID: l.CID, Complete: l.State == chunk.Complete})
		}
	}
	if len(s.Mappings) > maxSnapshotItems {
		s.Mappings = s.Mappings[:maxSnapshotItems]
	}
	if len(s.Holdings) > maxSnapshotItems {
		s.Holdings = s.Holdings[:maxSnapshotItems]
	}
	return s, nil
}

// loadCatalog seeds the catalogue with the signed mappings of local layers.
func (n *Node) loadCatalog(ctx context.Context) error {
	ls, err := n.db.Layers(ctx)
	if err != nil {
		return err
	}
	for _, l := range ls {
		if l.Signature == nil {
			continue
		}
		m := Mapping{Name: l.Name, CID: l.CID, Size: l.Size, Published: l.Published, Publisher: l.Publisher, Product: l.Product, Policy: l.Policy, Sig: l.Signature}
		if err := checkMapping(&m, n.cfg.Cluster.MayPublish); err != nil {
			n.log.Warn("local layer's mapping not announced", "layer", l.Name, "err", err)
			continue
		}
		n.catalog.merge(m)
	}
	return nil
}

// keepConnected dials the configured peers and redials them when they drop.
func (n *Node) keepConnected(ctx context.Context) {
	var infos []peer.AddrInfo
	for _, s := range n.cfg.Peers {
		a, err := ma.NewMultiaddr(s)
		if err == nil {
			var ai *peer.AddrInfo
			if ai, err = peer.AddrInfoFromP2pAddr(a); err == nil {
				infos = append(infos, *ai)
				continue
			}
		}
		n.log.Warn("bad --peer address ignored", "addr", s, "err", err)
	}
	if len(infos) == 0 {
		return
	}
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		for _, ai := range infos {
			if n.host.Network().Connectedness(ai.ID) != network.Connected && n.gater.allowed(ai.ID) {
				dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				if err := n.host.Connect(dctx, ai); err != nil && ctx.Err() == nil {
					n.log.Debug("peer not reachable", "peer", ai.ID.String(), "err", err)
				}
				cancel()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

type mdnsNotifee struct {
	n   *Node
	ctx context.Context
}

func (m mdnsNotifee) HandlePeerFound(ai peer.AddrInfo) {
	if ai.ID == m.n.host.ID() || !m.n.gater.allowed(ai.ID) {
		return
	}
	ctx, cancel := context.WithTimeout(m.ctx, 5*time.Second)
	defer cancel()
	if err := m.n.host.Connect(ctx, ai); err != nil {
		m.n.log.Debug("mdns peer not reachable", "peer", ai.ID.String(), "err", err)
	}
}

// stateOf is this host's last reported state for a layer.
func (n *Node) stateOf(layer string) (HostState, bool) {
	n.stMu.Lock()
	defer n.stMu.Unlock()
	st, ok := n.states[layer]
	return st, ok
}
