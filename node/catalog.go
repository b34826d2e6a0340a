package node

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/license"
	"github.com/p2pimg/p2pimg/policy"
)

// Mapping says that layer NAME:TAG is the manifest CID, signed by the host
// that published it. Signed by the publisher, not by whoever gossips it, so
// any host can pass the catalogue on to one that joins late.
type Mapping struct {
	Name      string `json:"name"`
	CID       string `json:"cid"`
	Size      int64  `json:"size"`
	Published int64  `json:"published"` // unix nanoseconds
	Publisher string `json:"publisher"` // peer id
	// Product names the licensed product the layer needs: activating it
	// claims a seat on each host first.
	Product string `json:"product,omitempty"`
	// Policy is the layer policy (policy.Layer, canonical JSON) its
	// publisher set: who holds it, sync mode, minimum copies.
	Policy json.RawMessage `json:"policy,omitempty"`
	Sig    []byte          `json:"sig"`
}

func (m *Mapping) signedBytes() []byte {
	b := "p2pimg mapping v1\n" + m.Name + "\n" + m.CID + "\n" + strconv.FormatInt(m.Size, 10) + "\n" +
		strconv.FormatInt(m.Published, 10) + "\n" + m.Publisher
	if m.Product != "" {
		b += "\nproduct " + m.Product
	}
	if len(m.Policy) > 0 {
		h := sha256.Sum256(m.Policy)
		b += "\npolicy " + hex.EncodeToString(h[:])
	}
	return []byte(b)
}

func signMapping(key crypto.PrivKey, m Mapping) (Mapping, error) {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return m, err
	}
	m.Publisher = id.String()
	m.Sig, err = key.Sign(m.signedBytes())
	return m, err
}

// newer orders two mappings of one name: the later publication wins, and
// equal times fall to the larger CID, so every host picks the same one.
func (m *Mapping) newer(o Mapping) bool {
	if m.Published != o.Published {
		return m.Published > o.Published
	}
	return m.CID > o.CID
}

// Holding says a host holds a layer, completely or partly (still fetching).
type Holding struct {
	CID      string `json:"cid"`
	Complete bool   `json:"complete"`
}

// snapshot is what a host gossips: the catalogue it knows and what it holds.
// Seq (unix nanoseconds at sending) only grows per host, so a replayed or
// reordered older snapshot is ignored.
type snapshot struct {
	Seq         int64             `json:"seq"`
	Mappings    []Mapping         `json:"mappings"`
	Holdings    []Holding         `json:"holdings"`
	Activations []Activation      `json:"activations,omitempty"`
	States      []HostState       `json:"states,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	// HostPolicy is the sender's host policy (policy.Host, JSON).
	HostPolicy json.RawMessage `json:"host_policy,omitempty"`
}

const (
	maxSnapshotBytes = 1 << 20
	maxSnapshotItems = 4096
	maxFutureSkew    = 5 * time.Minute
)

// decodeSnapshot parses and checks a snapshot without any state: strict
// JSON, sizes, names, ids and every mapping's signature and publisher.
func decodeSnapshot(data []byte, c *ClusterConfig) (*snapshot, error) {
	mayPublish := c.MayPublish
	if len(data) > maxSnapshotBytes {
		return nil, fmt.Errorf("snapshot of %d bytes, at most %d", len(data), maxSnapshotBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var s snapshot
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("snapshot: %v", err)
	}
	if dec.More() {
		return nil, errors.New("snapshot: trailing data")
	}
	if s.Seq <= 0 || len(s.Mappings) > maxSnapshotItems || len(s.Holdings) > maxSnapshotItems ||
		len(s.Activations) > maxSnapshotItems || len(s.States) > maxSnapshotItems || len(s.Labels) > 64 {
		return nil, fmt.Errorf("snapshot: seq %d, %d mappings, %d holdings, %d activations, %d states, %d labels",
			s.Seq, len(s.Mappings), len(s.Holdings), len(s.Activations), len(s.States), len(s.Labels))
	}
	for i := range s.Activations {
		if err := checkActivation(&s.Activations[i], c); err != nil {
			return nil, fmt.Errorf("snapshot: activation %d: %w", i, err)
		}
	}
	for _, st := range s.States {
		if _, err := chunk.ParseName(st.Layer); err != nil || len(st.Detail) > 1024 || len(st.At) > 4096 || len(st.State) > 32 {
			return nil, fmt.Errorf("snapshot: malformed state for %.60q", st.Layer)
		}
	}
	for k, v := range s.Labels {
		if _, _, err := ParseLabel(k + "=" + v); err != nil {
			return nil, fmt.Errorf("snapshot: %w", err)
		}
	}
	for i := range s.Mappings {
		if err := checkMapping(&s.Mappings[i], mayPublish); err != nil {
			return nil, fmt.Errorf("snapshot: mapping %d: %w", i, err)
		}
	}
	for _, h := range s.Holdings {
		if _, err := parseManifestCID(h.CID); err != nil {
			return nil, fmt.Errorf("snapshot: holding: %w", err)
		}
	}
	if len(s.HostPolicy) > 0 {
		if _, err := policy.DecodeHost(s.HostPolicy); err != nil {
			return nil, fmt.Errorf("snapshot: %w", err)
		}
	}
	return &s, nil
}

func parseManifestCID(s string) (cid.Cid, error) {
	id, err := cid.Decode(s)
	if err != nil {
		return cid.Undef, fmt.Errorf("manifest id %.70q: %v", s, err)
	}
	if id.Version() != 1 || id.Type() != chunk.ManifestCodec {
		return cid.Undef, fmt.Errorf("%s is not a manifest id", id)
	}
	return id, nil
}

func checkMapping(m *Mapping, mayPublish func(peer.ID) bool) error {
	if _, err := chunk.ParseName(m.Name); err != nil {
		return err
	}
	if _, err := parseManifestCID(m.CID); err != nil {
		return err
	}
	if m.Size < 0 || m.Published <= 0 {
		return fmt.Errorf("%s: size %d, published %d", m.Name, m.Size, m.Published)
	}
	if m.Product != "" {
		if err := license.CheckProduct(m.Product); err != nil {
			return fmt.Errorf("%s: %v", m.Name, err)
		}
	}
	if len(m.Policy) > 0 {
		if _, err := layerPolicy(m.Policy); err != nil {
			return fmt.Errorf("%s: %v", m.Name, err)
		}
	}
	pub, err := peer.Decode(m.Publisher)
	if err != nil {
		return fmt.Errorf("%s: publisher %.60q: %v", m.Name, m.Publisher, err)
	}
	if !mayPublish(pub) {
		return fmt.Errorf("%s: %s may not publish layers in this cluster", m.Name, pub)
	}
	key, err := pub.ExtractPublicKey()
	if err != nil {
		return fmt.Errorf("%s: publisher key: %v", m.Name, err)
	}
	ok, err := key.Verify(m.signedBytes(), m.Sig)
	if err != nil || !ok {
		return fmt.Errorf("%s: bad signature by %s", m.Name, pub)
	}
	return nil
}

// catalog is this host's view of the cluster's layers.
type catalog struct {
	mu       sync.Mutex
	mappings map[string]Mapping          // by name
	holders  map[string]map[peer.ID]bool // manifest cid -> host -> complete
	held     map[peer.ID][]Holding       // each host's last holdings
	seen     map[peer.ID]int64           // last accepted seq per host
	heard    map[peer.ID]time.Time       // when
	acts     map[string]Activation       // newest per layer and selector
	states   map[peer.ID][]HostState     // each host's last report
	labels   map[peer.ID]map[string]string
	policies map[peer.ID]policy.Host // each host's host policy
	buckets  map[peer.ID]*bucket     // gossip flood limit per host
	dropped  int64                   // snapshots dropped by the flood limit
}

func newCatalog() *catalog {
	return &catalog{
		mappings: map[string]Mapping{}, holders: map[string]map[peer.ID]bool{},
		held: map[peer.ID][]Holding{}, seen: map[peer.ID]int64{}, heard: map[peer.ID]time.Time{},
		acts: map[string]Activation{}, states: map[peer.ID][]HostState{}, labels: map[peer.ID]map[string]string{},
		policies: map[peer.ID]policy.Host{}, buckets: map[peer.ID]*bucket{},
	}
}

// admit decides whether a snapshot from a host is new: replays and
// reordered older snapshots are ignored; one from too far ahead is rejected.
func (c *catalog) admit(from peer.ID, seq int64, now time.Time) pubsub.ValidationResult {
	if seq > now.Add(maxFutureSkew).UnixNano() {
		return pubsub.ValidationReject
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if seq <= c.seen[from] {
		return pubsub.ValidationIgnore
	}
	// A host that floods the topic: what it sends beyond its share is
	// dropped before anything is merged (its valid snapshots still count,
	// and a later one carries everything).
	b := c.buckets[from]
	if b == nil {
		b = &bucket{tokens: floodBurst, at: now}
		c.buckets[from] = b
	}
	b.tokens = min(floodBurst, b.tokens+now.Sub(b.at).Seconds()*floodRate)
	b.at = now
	if b.tokens < 1 {
		c.dropped++
		return pubsub.ValidationIgnore
	}
	b.tokens--
	c.seen[from] = seq
	return pubsub.ValidationAccept
}

// Each host may gossip floodRate snapshots a second, in bursts of up to
// floodBurst; a snapshot carries a host's whole state, so dropping one
// loses nothing the next does not bring.
const (
	floodRate  = 20.0
	floodBurst = 100.0
)

type bucket struct {
	tokens float64
	at     time.Time
}

// merge takes in a mapping; it reports whether the catalogue changed.
func (c *catalog) merge(m Mapping) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	old, ok := c.mappings[m.Name]
	if ok && !m.newer(old) {
		return false
	}
	c.mappings[m.Name] = m
	return true
}

// apply takes in a validated snapshot from a host.
func (c *catalog) apply(from peer.ID, s *snapshot, now time.Time) {
	for _, m := range s.Mappings {
		c.merge(m)
	}
	c.setHoldings(from, s.Holdings)
	for _, a := range s.Activations {
		c.mergeActivation(a)
	}
	c.mu.Lock()
	c.heard[from] = now
	c.states[from] = s.States
	c.labels[from] = s.Labels
	c.policies[from], _ = policy.DecodeHost(s.HostPolicy)
	if len(s.HostPolicy) == 0 {
		c.policies[from] = policy.Host{}
	}
	c.mu.Unlock()
}

// mergeActivation keeps a if it is the newest for its layer and selector;
// it reports whether it did.
func (c *catalog) mergeActivation(a Activation) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.acts[a.key()]; ok && !a.newer(old) {
		return false
	}
	c.acts[a.key()] = a
	return true
}

func (c *catalog) activations() []Activation {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Collect(maps.Values(c.acts))
}

// hostView is what a host last told about itself.
type hostView struct {
	labels map[string]string
	states []HostState
	policy policy.Host
}

// hosts are the other hosts heard from, with their labels and states.
func (c *catalog) hosts() map[peer.ID]hostView {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[peer.ID]hostView{}
	for p := range c.heard {
		out[p] = hostView{c.labels[p], c.states[p], c.policies[p]}
	}
	return out
}

func (c *catalog) setHoldings(from peer.ID, hs []Holding) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, h := range c.held[from] {
		delete(c.holders[h.CID], from)
	}
	c.held[from] = hs
	for _, h := range hs {
		if c.holders[h.CID] == nil {
			c.holders[h.CID] = map[peer.ID]bool{}
		}
		c.holders[h.CID][from] = h.Complete
	}
}

// forget drops a host's holdings (it left or was blocked).
func (c *catalog) forget(p peer.ID) { c.setHoldings(p, nil) }

func (c *catalog) lookup(name string) (Mapping, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, ok := c.mappings[name]
	return m, ok
}

// holdersOf returns the hosts holding a layer, complete ones first.
func (c *catalog) holdersOf(id string) []peer.ID {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []peer.ID
	for p, complete := range c.holders[id] {
		if complete {
			out = append([]peer.ID{p}, out...)
		} else {
			out = append(out, p)
		}
	}
	return out
}

func (c *catalog) all() []Mapping {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := slices.Collect(maps.Values(c.mappings))
	slices.SortFunc(out, func(a, b Mapping) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func (c *catalog) holdings(id string) map[peer.ID]bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[peer.ID]bool{}
	for p, v := range c.holders[id] {
		out[p] = v
	}
	return out
}
