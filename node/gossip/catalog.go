package gossip

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/policy"
)

// Catalog is this host's view of the cluster: every record it holds, by
// origin, with their summaries for anti-entropy, and the views built from
// them (the newest mapping of each name, who holds what, activations,
// each host's states, labels, policy and when it was last seen). It is
// safe for concurrent use.
type Catalog struct {
	mu      sync.Mutex
	self    peer.ID // this host: not one of the "other hosts"
	origins map[peer.ID]*originSet
	buckets [numBuckets]bucketSum
	outbox  []Record // records originated here, not gossiped yet
	limit   int      // records per origin, at most

	// views
	mappings map[string]Mapping          // by name: the newest
	holders  map[string]map[peer.ID]bool // manifest cid -> host -> complete
	acts     map[string]Activation       // newest per layer and selector
	states   map[peer.ID]map[string]HostState
	labels   map[peer.ID]map[string]string
	names    map[peer.ID]string
	policies map[peer.ID]policy.Host
	stores   map[peer.ID]*StoreSummary
	seen     map[peer.ID]time.Time // last sign of life, as this host learned it
	forgot   map[peer.ID]time.Time // hosts forgotten by the operator: records up to then stay out

	floods  map[peer.ID]*tokens // gossip flood limit per host
	dropped int64               // messages dropped by the flood limit
	refused map[string]int64    // records refused, by reason
}

// numBuckets splits the origins for the digest exchange: two summaries
// that differ are compared bucket by bucket, then origin by origin.
const numBuckets = 64

// DefaultLimit is how many records one origin may have in a catalogue.
const DefaultLimit = 1 << 20

// ErrLimit is a record refused because its origin reached the limit.
var ErrLimit = errors.New("catalogue limit reached")

type originSet struct {
	recs  map[string]*entry // by slot
	sum   Summary
	owner peer.ID
}

type entry struct {
	rec Record
	h   [32]byte
	tie string // breaks a tie of versions the way the views do
}

// tieKey orders two records of one slot and version: the larger CID for a
// mapping and the larger signature for an activation (as Newer does), the
// larger digest for the others.
func tieKey(r *checked, h [32]byte) string {
	switch {
	case r.mapping != nil:
		return r.mapping.CID
	case r.act != nil:
		return string(r.act.Sig)
	}
	return string(h[:])
}

// Summary sums up one origin's records: two hosts with equal summaries
// hold the same records of it.
type Summary struct {
	Origin string   `json:"o"`
	Max    int64    `json:"max"`   // highest version
	Count  int      `json:"count"` // records (deletions included)
	XOR    [32]byte `json:"xor"`   // of the records' digests
}

type bucketSum struct {
	dirty bool
	h     [32]byte
}

// NewCatalog returns an empty catalogue.
func NewCatalog() *Catalog {
	return &Catalog{
		origins: map[peer.ID]*originSet{}, limit: DefaultLimit,
		mappings: map[string]Mapping{}, holders: map[string]map[peer.ID]bool{},
		acts: map[string]Activation{}, states: map[peer.ID]map[string]HostState{}, labels: map[peer.ID]map[string]string{}, names: map[peer.ID]string{},
		policies: map[peer.ID]policy.Host{}, stores: map[peer.ID]*StoreSummary{}, seen: map[peer.ID]time.Time{}, forgot: map[peer.ID]time.Time{},
		floods: map[peer.ID]*tokens{}, refused: map[string]int64{},
	}
}

// put stores a checked record; it reports whether the catalogue changed.
// Caller holds c.mu.
func (c *Catalog) put(r *checked) (bool, error) {
	if until, ok := c.forgot[r.origin]; ok && r.Version <= until.UnixNano() {
		return false, nil
	}
	o := c.origins[r.origin]
	if o == nil {
		o = &originSet{recs: map[string]*entry{}, sum: Summary{Origin: r.Origin}, owner: r.origin}
		c.origins[r.origin] = o
	}
	slot := r.slot()
	old := o.recs[slot]
	h := r.digest()
	tie := tieKey(r, h)
	if old != nil && (old.rec.Version > r.Version || (old.rec.Version == r.Version && old.tie >= tie)) {
		return false, nil
	}
	if old == nil && o.sum.Count >= c.limit {
		c.refused["limit"]++
		return false, fmt.Errorf("%w: %s already has %d records here (at most %d)", ErrLimit, r.origin, o.sum.Count, c.limit)
	}
	if old != nil {
		xorInto(&o.sum.XOR, old.h)
	} else {
		o.sum.Count++
	}
	xorInto(&o.sum.XOR, h)
	o.sum.Max = max(o.sum.Max, r.Version)
	o.recs[slot] = &entry{rec: r.Record, h: h, tie: tie}
	c.buckets[bucketOf(r.origin)].dirty = true
	c.view(r)
	return true, nil
}

// view updates the views with a record just stored. Caller holds c.mu.
func (c *Catalog) view(r *checked) {
	if t := time.Unix(0, r.Version); r.Kind != KindMapping && r.Kind != KindActivation && t.After(c.seen[r.origin]) {
		c.seen[r.origin] = t
	}
	switch r.Kind {
	case KindMapping:
		if old, ok := c.mappings[r.mapping.Name]; !ok || r.mapping.Newer(old) {
			c.mappings[r.mapping.Name] = *r.mapping
		}
	case KindActivation:
		if old, ok := c.acts[r.act.Key()]; !ok || r.act.Newer(old) {
			c.acts[r.act.Key()] = *r.act
		}
	case KindHolding:
		if r.holding == nil {
			delete(c.holders[r.Key], r.origin)
			if len(c.holders[r.Key]) == 0 {
				delete(c.holders, r.Key)
			}
			return
		}
		if c.holders[r.Key] == nil {
			c.holders[r.Key] = map[peer.ID]bool{}
		}
		c.holders[r.Key][r.origin] = r.holding.Complete
	case KindState:
		if r.state == nil {
			delete(c.states[r.origin], r.Key)
			return
		}
		if c.states[r.origin] == nil {
			c.states[r.origin] = map[string]HostState{}
		}
		c.states[r.origin][r.Key] = *r.state
	case KindHost:
		c.labels[r.origin] = r.host.Labels
		c.names[r.origin] = r.host.Name
		c.policies[r.origin] = r.policy
		c.stores[r.origin] = r.host.Store
	}
}

// apply stores records checked elsewhere (gossip, a pull); it returns how
// many changed the catalogue.
func (c *Catalog) apply(rs []*checked) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, r := range rs {
		if changed, _ := c.put(r); changed {
			n++
		}
	}
	return n
}

// local stores a record originated on this host and queues it for the
// announcer.
func (c *Catalog) local(r *checked) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	changed, err := c.put(r)
	if changed {
		c.outbox = append(c.outbox, r.Record)
	}
	return err
}

// takeOutbox returns the records waiting to be gossiped.
func (c *Catalog) takeOutbox() []Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.outbox
	c.outbox = nil
	return out
}

// signedChecked wraps a mapping or an activation whose signature was made
// or checked here: what put needs, without checking it again.
func signedChecked(r Record, m *Mapping, a *Activation) (*checked, error) {
	origin, err := peer.Decode(r.Origin)
	if err != nil {
		return nil, fmt.Errorf("%s %.80q: signer %.60q: %w", r.Kind, r.Key, r.Origin, err)
	}
	return &checked{Record: r, origin: origin, mapping: m, act: a}, nil
}

// Merge takes in a mapping published (or re-signed) on this host and
// queues it for gossip. The mapping must be signed; an error says why it
// was refused (ErrLimit).
func (c *Catalog) Merge(m Mapping) error {
	ck, err := signedChecked(mappingRecord(m), &m, nil)
	if err != nil {
		return err
	}
	return c.local(ck)
}

// seed takes in a mapping this host already announced before a restart:
// it is stored, not queued (anti-entropy carries it to who lacks it).
func (c *Catalog) seed(m Mapping) error {
	ck, err := signedChecked(mappingRecord(m), &m, nil)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err = c.put(ck)
	return err
}

// MergeActivation takes in an activation given to this host (signed by an
// operator, or by this host for itself) and queues it for gossip.
func (c *Catalog) MergeActivation(a Activation) error {
	ck, err := signedChecked(activationRecord(a), nil, &a)
	if err != nil {
		return err
	}
	return c.local(ck)
}

// Admit applies the flood limit to a gossip message from a host: what it
// sends beyond its share is dropped before anything is checked or merged
// (anti-entropy brings what was dropped later).
func (c *Catalog) Admit(from peer.ID, now time.Time) pubsub.ValidationResult {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.floods[from]
	if b == nil {
		b = &tokens{n: floodBurst, at: now}
		c.floods[from] = b
	}
	b.n = min(floodBurst, b.n+now.Sub(b.at).Seconds()*floodRate)
	b.at = now
	if b.n < 1 {
		c.dropped++
		return pubsub.ValidationIgnore
	}
	b.n--
	return pubsub.ValidationAccept
}

// Each host may gossip floodRate messages a second, in bursts of up to
// floodBurst.
const (
	floodRate  = 20.0
	floodBurst = 100.0
)

type tokens struct {
	n  float64
	at time.Time
}

// Activations is the newest activation of every layer and selector.
func (c *Catalog) Activations() []Activation {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Collect(maps.Values(c.acts))
}

// HostView is what a host last told about itself, and when this host
// last had a sign of it.
type HostView struct {
	Name   string
	Labels map[string]string
	States []HostState
	Policy policy.Host
	Store  *StoreSummary // nil: none announced (callers must not change it)
	Seen   time.Time
}

// Hosts are the other hosts known, with their labels, states and last
// sign of life.
func (c *Catalog) Hosts() map[peer.ID]HostView {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[peer.ID]HostView{}
	for p, at := range c.seen {
		if p == c.self {
			continue
		}
		v := HostView{Name: c.names[p], Labels: c.labels[p], Policy: c.policies[p], Store: c.stores[p], Seen: at}
		for _, st := range c.states[p] {
			v.States = append(v.States, st)
		}
		out[p] = v
	}
	return out
}

// SetSelf names this host: what it says of itself is not reported as
// another host's.
func (c *Catalog) SetSelf(p peer.ID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.self = p
}

// Seen records a sign of life of p at t (a connection, a peer's report).
func (c *Catalog) Seen(p peer.ID, t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, gone := c.forgot[p]; gone {
		return
	}
	if t.After(c.seen[p]) {
		c.seen[p] = t
	}
}

// Forget drops a host's holdings (it left or was blocked); its other
// records stay.
func (c *Catalog) Forget(p peer.ID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for cid, hs := range c.holders {
		delete(hs, p)
		if len(hs) == 0 {
			delete(c.holders, cid)
		}
	}
}

// Drop removes every record a host stated about itself, and keeps records
// of it up to now out (an operator's `cluster forget`); mappings and
// activations it signed stay, for they speak for the cluster.
func (c *Catalog) Drop(p peer.ID, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.forgot[p] = now
	if o := c.origins[p]; o != nil {
		for slot, e := range o.recs {
			if e.rec.Kind == KindMapping || e.rec.Kind == KindActivation {
				continue
			}
			xorInto(&o.sum.XOR, e.h)
			o.sum.Count--
			delete(o.recs, slot)
		}
		c.buckets[bucketOf(p)].dirty = true
	}
	for cid, hs := range c.holders {
		delete(hs, p)
		if len(hs) == 0 {
			delete(c.holders, cid)
		}
	}
	delete(c.states, p)
	delete(c.labels, p)
	delete(c.names, p)
	delete(c.policies, p)
	delete(c.stores, p)
	delete(c.seen, p)
}

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
	return maps.Clone(c.holders[id])
}

// Dropped counts the gossip messages dropped by the flood limit.
func (c *Catalog) Dropped() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dropped
}

// Records counts the records held, by kind.
func (c *Catalog) Records() map[Kind]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[Kind]int{}
	for _, o := range c.origins {
		for _, e := range o.recs {
			out[e.rec.Kind]++
		}
	}
	return out
}

// seenAll is the last sign of life of every other host known.
func (c *Catalog) seenAll() map[peer.ID]time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[peer.ID]time.Time, len(c.seen))
	for p, t := range c.seen {
		if p != c.self {
			out[p] = t
		}
	}
	return out
}

// seenAt is the last sign of life of p (zero: none).
func (c *Catalog) seenAt(p peer.ID) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[p]
}

// Verified is a record that passed CheckRecord, ready to be loaded into
// any number of catalogues without checking it again.
type Verified struct{ c *checked }

// MappingRecord is the record of a signed mapping.
func MappingRecord(m Mapping) Record { return mappingRecord(m) }
