package gossip

import (
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/policy"
)

// Catalog is this host's view of the cluster's layers, activations and
// hosts. It is safe for concurrent use.
type Catalog struct {
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

// NewCatalog returns an empty catalogue.
func NewCatalog() *Catalog {
	return &Catalog{
		mappings: map[string]Mapping{}, holders: map[string]map[peer.ID]bool{},
		held: map[peer.ID][]Holding{}, seen: map[peer.ID]int64{}, heard: map[peer.ID]time.Time{},
		acts: map[string]Activation{}, states: map[peer.ID][]HostState{}, labels: map[peer.ID]map[string]string{},
		policies: map[peer.ID]policy.Host{}, buckets: map[peer.ID]*bucket{},
	}
}

// Admit decides whether a snapshot from a host is new: replays and
// reordered older snapshots are ignored; one from too far ahead is rejected.
func (c *Catalog) Admit(from peer.ID, seq int64, now time.Time) pubsub.ValidationResult {
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

// Merge takes in a mapping; it reports whether the catalogue changed.
func (c *Catalog) Merge(m Mapping) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	old, ok := c.mappings[m.Name]
	if ok && !m.Newer(old) {
		return false
	}
	c.mappings[m.Name] = m
	return true
}

// Apply takes in a validated snapshot from a host.
func (c *Catalog) Apply(from peer.ID, s *Snapshot, now time.Time) {
	for _, m := range s.Mappings {
		c.Merge(m)
	}
	c.setHoldings(from, s.Holdings)
	for _, a := range s.Activations {
		c.MergeActivation(a)
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

// MergeActivation keeps a if it is the newest for its layer and selector;
// it reports whether it did.
func (c *Catalog) MergeActivation(a Activation) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.acts[a.Key()]; ok && !a.Newer(old) {
		return false
	}
	c.acts[a.Key()] = a
	return true
}

// Activations is the newest activation of every layer and selector.
func (c *Catalog) Activations() []Activation {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Collect(maps.Values(c.acts))
}

// HostView is what a host last told about itself.
type HostView struct {
	Labels map[string]string
	States []HostState
	Policy policy.Host
	Heard  time.Time
}

// Hosts are the other hosts heard from, with their labels and states.
func (c *Catalog) Hosts() map[peer.ID]HostView {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[peer.ID]HostView{}
	for p, at := range c.heard {
		out[p] = HostView{c.labels[p], c.states[p], c.policies[p], at}
	}
	return out
}

func (c *Catalog) setHoldings(from peer.ID, hs []Holding) {
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

// Forget drops a host's holdings (it left or was blocked).
func (c *Catalog) Forget(p peer.ID) { c.setHoldings(p, nil) }

// Lookup is the newest mapping of a name.
func (c *Catalog) Lookup(name string) (Mapping, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, ok := c.mappings[name]
	return m, ok
}

// HoldersOf returns the hosts holding a layer, complete ones first.
func (c *Catalog) HoldersOf(id string) []peer.ID {
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

// All is every mapping, sorted by name.
func (c *Catalog) All() []Mapping {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := slices.Collect(maps.Values(c.mappings))
	slices.SortFunc(out, func(a, b Mapping) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Holdings are the hosts holding manifest id: true for a complete copy.
func (c *Catalog) Holdings(id string) map[peer.ID]bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[peer.ID]bool{}
	for p, v := range c.holders[id] {
		out[p] = v
	}
	return out
}

// Dropped counts the snapshots dropped by the flood limit.
func (c *Catalog) Dropped() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dropped
}
