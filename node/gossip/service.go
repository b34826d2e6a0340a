package gossip

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/node/faults"
	"github.com/p2pimg/p2pimg/node/internal/notify"
)

// Layers lists this host's layer records: what it holds.
type Layers interface {
	// Layers lists every record, sorted by name.
	Layers(ctx context.Context) ([]chunk.Layer, error)
}

// Config configures the announcer.
type Config struct {
	Host    host.Host
	Cluster *cluster.Config
	Catalog *Catalog
	Store   Layers
	Log     *slog.Logger
	Labels  map[string]string
	// Interval is how often the snapshot is gossiped without a change.
	Interval time.Duration
	// Announce wakes the announcer: something in the snapshot changed.
	Announce *notify.Signal
	// Activations is poked when a snapshot brought activations.
	Activations *notify.Signal
	// HostPolicy is this host's policy (canonical JSON) and States its
	// activation states: both go into the snapshot.
	HostPolicy func() json.RawMessage
	States     func() []HostState
	Reg        prometheus.Registerer
	Faults     *faults.Faults
}

// Service gossips this host's snapshot and takes in the others'.
type Service struct{ cfg Config }

// New registers the catalogue's metrics; nothing runs until Run.
func New(cfg Config) *Service {
	cfg.Reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "p2pimg_gossip_flood_dropped_total", Help: "Catalogue snapshots dropped because their host sent more than its share.",
	}, func() float64 { return float64(cfg.Catalog.Dropped()) }))
	return &Service{cfg: cfg}
}

// TopicName is the catalogue topic of cluster name.
func TopicName(name string) string { return "p2pimg/" + name + "/catalog/1" }

// NewPubSub starts gossipsub on h: strict signing, flood publishing, and
// scores that penalise peers that send invalid gossip and peers the gater
// keeps out. It runs until ctx ends.
func NewPubSub(ctx context.Context, h host.Host, clusterName string, allowed func(peer.ID) bool) (*pubsub.PubSub, error) {
	sp, st := scoreParams(TopicName(clusterName), allowed)
	ps, err := pubsub.NewGossipSub(ctx, h,
		pubsub.WithMessageSigning(true),
		pubsub.WithStrictSignatureVerification(true),
		pubsub.WithFloodPublish(true),
		pubsub.WithPeerScore(sp, st),
		pubsub.WithMaxMessageSize(MaxSnapshotBytes+4096),
	)
	if err != nil {
		return nil, fmt.Errorf("gossipsub: %w", err)
	}
	return ps, nil
}

// scoreParams penalise peers that send invalid gossip and peers this node
// caught sending bad chunks. IP colocation is not penalised: a testnet
// runs every host on 127.0.0.1.
func scoreParams(topic string, allowed func(peer.ID) bool) (*pubsub.PeerScoreParams, *pubsub.PeerScoreThresholds) {
	return &pubsub.PeerScoreParams{
			Topics: map[string]*pubsub.TopicScoreParams{topic: {
				TopicWeight:                    1,
				TimeInMeshQuantum:              time.Second,
				InvalidMessageDeliveriesWeight: -100,
				InvalidMessageDeliveriesDecay:  0.5,
			}},
			AppSpecificScore: func(p peer.ID) float64 {
				if !allowed(p) {
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

// Run joins the catalogue topic on ps, seeds the catalogue with the
// signed mappings of local layers, and gossips until ctx ends.
// Cancellation is not an error.
func (s *Service) Run(ctx context.Context, ps *pubsub.PubSub) error {
	name := TopicName(s.cfg.Cluster.Name)
	if err := ps.RegisterTopicValidator(name, s.validate); err != nil {
		return fmt.Errorf("gossip: validator for %s: %w", name, err)
	}
	topic, err := ps.Join(name)
	if err != nil {
		return fmt.Errorf("gossip: join %s: %w", name, err)
	}
	defer topic.Close()
	sub, err := topic.Subscribe()
	if err != nil {
		return fmt.Errorf("gossip: subscribe to %s: %w", name, err)
	}
	defer sub.Cancel()
	if err := s.loadCatalog(ctx); err != nil {
		return fmt.Errorf("gossip: %w", err)
	}
	// A new connection gets our snapshot at once: a late joiner catches up.
	nb := &network.NotifyBundle{ConnectedF: func(network.Network, network.Conn) { s.cfg.Announce.Notify() }}
	s.cfg.Host.Network().Notify(nb)
	defer s.cfg.Host.Network().StopNotify(nb)
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.receive(ctx, sub) })
	g.Go(func() error { return s.announcer(ctx, topic) })
	if s.cfg.Faults.Get().GossipFlood {
		g.Go(func() error { return s.flood(ctx, topic) })
	}
	return g.Wait()
}

// validate is the gossip validator: strict schema and size, signer a
// member, every mapping signed by an allowed publisher, no replays.
func (s *Service) validate(_ context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	origin := msg.GetFrom()
	if !s.cfg.Cluster.IsMember(origin) {
		s.cfg.Log.Warn("gossip from a non-member rejected", "origin", origin.String(), "via", from.String())
		return pubsub.ValidationReject
	}
	snap, err := DecodeSnapshot(msg.Data, s.cfg.Cluster)
	if err != nil {
		s.cfg.Log.Warn("gossip rejected", "origin", origin.String(), "err", err)
		return pubsub.ValidationReject
	}
	res := s.cfg.Catalog.Admit(origin, snap.Seq, time.Now())
	if res == pubsub.ValidationAccept {
		msg.ValidatorData = snap
	}
	return res
}

func (s *Service) receive(ctx context.Context, sub *pubsub.Subscription) error {
	for {
		msg, err := sub.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("gossip: receive: %w", err)
		}
		if snap, ok := msg.ValidatorData.(*Snapshot); ok && msg.GetFrom() != s.cfg.Host.ID() {
			s.cfg.Catalog.Apply(msg.GetFrom(), snap, time.Now())
			if len(snap.Activations) > 0 {
				s.cfg.Activations.Notify()
			}
		}
	}
}

// announcer gossips this node's snapshot on every change and on an interval.
func (s *Service) announcer(ctx context.Context, topic *pubsub.Topic) error {
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	var seq int64
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-s.cfg.Announce.C():
		}
		snap, err := s.snapshot(ctx)
		if err != nil {
			s.cfg.Log.Warn("announce", "err", err)
			continue
		}
		snap.Seq = max(time.Now().UnixNano(), seq+1)
		seq = snap.Seq
		b, err := json.Marshal(snap)
		if err == nil {
			err = topic.Publish(ctx, b)
		}
		if err != nil && ctx.Err() == nil {
			s.cfg.Log.Warn("announce", "err", err)
		}
	}
}

// flood publishes snapshots as fast as it can (faults.GossipFlood).
func (s *Service) flood(ctx context.Context, topic *pubsub.Topic) error {
	for seq := time.Now().UnixNano(); ctx.Err() == nil; seq++ {
		if snap, err := s.snapshot(ctx); err == nil {
			snap.Seq = seq
			b, _ := json.Marshal(snap)
			topic.Publish(ctx, b)
		}
	}
	return nil
}

// snapshot is what this node knows and holds.
func (s *Service) snapshot(ctx context.Context) (*Snapshot, error) {
	ls, err := s.cfg.Store.Layers(ctx)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	c := s.cfg.Catalog
	snap := &Snapshot{Mappings: c.All(), Activations: c.Activations(), Labels: s.cfg.Labels,
		HostPolicy: s.cfg.HostPolicy(), States: s.cfg.States()}
	seen := map[string]bool{}
	for _, l := range ls {
		if !seen[l.CID] {
			seen[l.CID] = true
			snap.Holdings = append(snap.Holdings, Holding{CID: l.CID, Complete: l.State == chunk.Complete})
		}
	}
	if len(snap.Mappings) > maxSnapshotItems {
		snap.Mappings = snap.Mappings[:maxSnapshotItems]
	}
	if len(snap.Holdings) > maxSnapshotItems {
		snap.Holdings = snap.Holdings[:maxSnapshotItems]
	}
	return snap, nil
}

// loadCatalog seeds the catalogue with the signed mappings of local layers.
func (s *Service) loadCatalog(ctx context.Context) error {
	ls, err := s.cfg.Store.Layers(ctx)
	if err != nil {
		return fmt.Errorf("load local layers: %w", err)
	}
	for _, l := range ls {
		if l.Signature == nil {
			continue
		}
		m := Mapping{Name: l.Name, CID: l.CID, Size: l.Size, Published: l.Published, Publisher: l.Publisher, Product: l.Product, Policy: l.Policy, Sig: l.Signature}
		if err := CheckMapping(&m, s.cfg.Cluster.MayPublish); err != nil {
			s.cfg.Log.Warn("local layer's mapping not announced", "layer", l.Name, "err", err)
			continue
		}
		s.cfg.Catalog.Merge(m)
	}
	return nil
}
