package gossip

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/node/faults"
	"github.com/p2pimg/p2pimg/node/notify"
)

// Layers lists this host's layer records: what it holds.
type Layers interface {
	// Layers lists every record, sorted by name.
	Layers(ctx context.Context) ([]chunk.Layer, error)
	// LayerGen changes whenever a layer record is written or deleted;
	// equal values mean Layers would list the same records.
	LayerGen() uint64
}

// Config configures the catalogue service.
type Config struct {
	Host    host.Host
	Key     crypto.PrivKey // signs what this host says of itself
	Cluster *cluster.Config
	Catalog *Catalog
	Store   Layers
	Log     *slog.Logger
	Labels  map[string]string
	Name    string // this host's name for people
	// Interval is how often this host compares its catalogue with one
	// peer's (anti-entropy) and looks at its own records again.
	Interval time.Duration
	// Announce wakes the announcer: something this host says changed.
	Announce *notify.Signal
	// Activations is poked when records brought activations.
	Activations *notify.Signal
	// HostPolicy is this host's policy (canonical JSON) and States its
	// activation states: both are records this host states.
	HostPolicy func() json.RawMessage
	States     func() []HostState
	// StoreUse measures this host's store for its host record (nil:
	// none announced).
	StoreUse StoreFunc
	// UnreachableAfter and GoneAfter are how long a host may go unheard
	// before it is shown as unreachable, then as gone.
	UnreachableAfter, GoneAfter time.Duration
	Reg                         prometheus.Registerer
	Faults                      *faults.Faults
}

// Service gossips this host's changes, takes in the others', and repairs
// what it missed by anti-entropy.
type Service struct {
	cfg     Config
	self    peer.ID
	bytes   *prometheus.CounterVec
	refused *prometheus.CounterVec

	mu      sync.Mutex
	version int64 // of the last record this host stated
	// held is the holding records' data last built from the store, at
	// its layer generation gen (valid once ok).
	held struct {
		gen  uint64
		ok   bool
		want map[string][]byte
	}
	// store is the store summary this host announces (last) and when it
	// last measured the store (looked).
	store struct {
		last   *StoreSummary
		looked time.Time
	}
}

// New registers the catalogue's metrics; nothing runs until Run.
func New(cfg Config) *Service {
	cfg.Catalog.SetSelf(cfg.Host.ID())
	s := &Service{cfg: cfg, self: cfg.Host.ID(),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "p2pimg_catalog_bytes_total", Help: "Catalogue bytes sent and received, by direction and way (gossip, sync).",
		}, []string{"dir", "via"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "p2pimg_catalog_records_refused_total", Help: "Catalogue records refused, by where they came from.",
		}, []string{"from"}),
	}
	cfg.Reg.MustRegister(s.bytes, s.refused, prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "p2pimg_gossip_flood_dropped_total", Help: "Catalogue messages dropped because their host sent more than its share.",
	}, func() float64 { return float64(cfg.Catalog.Dropped()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "p2pimg_catalog_records", Help: "Records in this host's catalogue.",
		}, func() float64 {
			n := 0
			for _, k := range cfg.Catalog.Records() {
				n += k
			}
			return float64(n)
		}))
	return s
}

func (s *Service) countSync(in, out int) {
	if in > 0 {
		s.bytes.WithLabelValues("in", "sync").Add(float64(in))
	}
	if out > 0 {
		s.bytes.WithLabelValues("out", "sync").Add(float64(out))
	}
}

func (s *Service) refuse(from string, err error) {
	s.refused.WithLabelValues(from).Inc()
	s.cfg.Log.Warn("catalogue record refused", "from", from, "err", err)
}

// TopicName is the catalogue topic of cluster name.
func TopicName(name string) string { return "p2pimg/" + name + "/catalog/2" }

// NewPubSub starts gossipsub on h: strict signing, and scores that
// penalise peers that send invalid gossip and peers the gater keeps out.
// It runs until ctx ends.
func NewPubSub(ctx context.Context, h host.Host, clusterName string, allowed func(peer.ID) bool, opts ...pubsub.Option) (*pubsub.PubSub, error) {
	sp, st := scoreParams(TopicName(clusterName), allowed)
	ps, err := pubsub.NewGossipSub(ctx, h, append([]pubsub.Option{
		pubsub.WithMessageSigning(true),
		pubsub.WithStrictSignatureVerification(true),
		pubsub.WithPeerScore(sp, st),
		pubsub.WithMaxMessageSize(MaxMessageBytes + 4096),
	}, opts...)...)
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
// signed mappings of local layers, serves and runs anti-entropy, and
// gossips this host's changes until ctx ends. Cancellation is not an
// error.
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
	s.cfg.Host.SetStreamHandler(SyncProto, func(st network.Stream) { s.serveSync(ctx, st) })
	defer s.cfg.Host.RemoveStreamHandler(SyncProto)
	// A new connection is compared at once: a late joiner, or a host back
	// from a partition, catches up by pulling.
	fresh := make(chan peer.ID, 64)
	nb := &network.NotifyBundle{ConnectedF: func(_ network.Network, c network.Conn) {
		select {
		case fresh <- c.RemotePeer():
		default:
		}
	}}
	s.cfg.Host.Network().Notify(nb)
	defer s.cfg.Host.Network().StopNotify(nb)
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.receive(ctx, sub) })
	g.Go(func() error { return s.announcer(ctx, topic) })
	g.Go(func() error { return s.antiEntropy(ctx, fresh) })
	if s.cfg.Faults.Get().GossipFlood {
		g.Go(func() error { return s.flood(ctx, topic) })
	}
	return g.Wait()
}

// validate is the gossip validator: the sender a member within its flood
// share, and every record valid (schema, size, signature, signer allowed
// to say it). A record's signature is checked here once; what passes is
// handed to receive.
func (s *Service) validate(_ context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	origin := msg.GetFrom()
	if !s.cfg.Cluster.IsMember(origin) {
		s.cfg.Log.Warn("gossip from a non-member rejected", "origin", origin.String(), "via", from.String())
		return pubsub.ValidationReject
	}
	if origin == s.self {
		return pubsub.ValidationAccept // our own, already in the catalogue
	}
	if res := s.cfg.Catalog.Admit(origin, time.Now()); res != pubsub.ValidationAccept {
		return res
	}
	rs, err := decodeBatch(msg.Data, s.cfg.Cluster, time.Now())
	if err != nil {
		s.refuse("gossip", fmt.Errorf("from %s: %w", origin, err))
		return pubsub.ValidationReject
	}
	msg.ValidatorData = rs
	return pubsub.ValidationAccept
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
		rs, ok := msg.ValidatorData.([]*checked)
		if !ok || msg.GetFrom() == s.self {
			continue
		}
		s.bytes.WithLabelValues("in", "gossip").Add(float64(len(msg.Data)))
		s.cfg.Catalog.Seen(msg.GetFrom(), time.Now())
		if s.cfg.Catalog.apply(rs) > 0 && hasActivation(rs) {
			s.cfg.Activations.Notify()
		}
	}
}

func hasActivation(rs []*checked) bool {
	for _, r := range rs {
		if r.Kind == KindActivation {
			return true
		}
	}
	return false
}

// minGap spaces this host's gossip messages: changes made within it
// travel together.
const minGap = 50 * time.Millisecond

// announcer states this host's records on every change and every
// interval (to catch what changed without a poke, such as labels, policy
// or a stale record of its own heard back) and gossips what changed: only
// the changes, never the whole state. A statement is cheap when nothing
// changed: the store is listed again only when its layers changed (about
// 4 ms for 10,000 layers otherwise).
func (s *Service) announcer(ctx context.Context, topic *pubsub.Topic) error {
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		if err := s.state(ctx); err != nil && ctx.Err() == nil {
			s.cfg.Log.Warn("announce", "err", err)
		}
		s.publish(ctx, topic, s.cfg.Catalog.takeOutbox())
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-s.cfg.Announce.C():
			select { // let a burst of changes land together
			case <-ctx.Done():
				return nil
			case <-time.After(minGap):
			}
		}
	}
}

// publish gossips records in messages under the size limit.
func (s *Service) publish(ctx context.Context, topic *pubsub.Topic, rs []Record) {
	for len(rs) > 0 {
		var b batch
		size := 32
		for len(rs) > 0 && (len(b.Records) == 0 || size+len(rs[0].Data)+len(rs[0].Key)+256 < MaxMessageBytes/2) {
			size += len(rs[0].Data) + len(rs[0].Key) + 256
			b.Records = append(b.Records, rs[0])
			rs = rs[1:]
		}
		data, err := json.Marshal(b)
		if err == nil {
			err = topic.Publish(ctx, data)
		}
		if err != nil {
			if ctx.Err() == nil {
				s.cfg.Log.Warn("announce", "err", err)
			}
			return
		}
		s.bytes.WithLabelValues("out", "gossip").Add(float64(len(data)))
	}
}

// flood publishes this host's own records again and again as fast as it
// can (faults.GossipFlood).
func (s *Service) flood(ctx context.Context, topic *pubsub.Topic) error {
	for ctx.Err() == nil {
		var rs []Record
		for _, k := range []Kind{KindHolding, KindState} {
			for _, key := range s.cfg.Catalog.statedKeys(s.self, k) {
				if r, ok := s.cfg.Catalog.stated(s.self, k, key); ok {
					rs = append(rs, r)
				}
			}
		}
		if r, ok := s.cfg.Catalog.stated(s.self, KindHost, ""); ok {
			rs = append(rs, r)
		}
		if len(rs) == 0 {
			select {
			case <-ctx.Done():
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		b, _ := json.Marshal(batch{Records: rs})
		topic.Publish(ctx, b)
	}
	return nil
}

// antiEntropy compares the catalogue with one random connected peer every
// interval, and with every newly connected peer at once.
func (s *Service) antiEntropy(ctx context.Context, fresh <-chan peer.ID) error {
	for round := 0; ; round++ {
		wait := s.cfg.Interval/2 + rand.N(s.cfg.Interval) // jittered: hosts do not sync in step
		var p peer.ID
		select {
		case <-ctx.Done():
			return nil
		case p = <-fresh:
		case <-time.After(wait):
			peers := s.cfg.Host.Network().Peers()
			if len(peers) == 0 {
				continue
			}
			p = peers[rand.IntN(len(peers))]
		}
		// Liveness reports are larger than a digest: one round in aliveEvery.
		if n, err := s.syncWith(ctx, p, round%aliveEvery == 0); err != nil {
			if ctx.Err() == nil {
				s.cfg.Log.Debug("catalogue sync", "peer", p.String(), "err", err)
			}
		} else if n > 0 {
			s.cfg.Log.Debug("catalogue sync pulled records", "peer", p.String(), "records", n)
			s.cfg.Activations.Notify()
		}
	}
}

// aliveEvery is how many sync rounds go by between two liveness reports.
const aliveEvery = 6

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
		if err := s.cfg.Catalog.seed(m); err != nil {
			s.cfg.Log.Warn("local layer's mapping not announced", "layer", l.Name, "err", err)
		}
	}
	return nil
}

// Reach is what this host knows of p's liveness: up when connected or
// heard from within the unreachable time, gone past the gone time.
func (s *Service) Reach(p peer.ID, now time.Time) (api.Reach, time.Time) {
	if p == s.self {
		return api.ReachSelf, now
	}
	seen := s.cfg.Catalog.seenAt(p)
	if len(s.cfg.Host.Network().ConnsToPeer(p)) > 0 {
		return api.ReachUp, now
	}
	switch age := now.Sub(seen); {
	case seen.IsZero() || age > s.cfg.GoneAfter:
		return api.ReachGone, seen
	case age > s.cfg.UnreachableAfter:
		return api.ReachUnreachable, seen
	}
	return api.ReachUp, seen
}
