package gossip

import (
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pimg/p2pimg/node/cluster"
)

func bucketOf(p peer.ID) int {
	h := sha256.Sum256([]byte(p))
	return int(h[0]) % numBuckets
}

func xorInto(dst *[32]byte, h [32]byte) {
	for i := range dst {
		dst[i] ^= h[i]
	}
}

// root is the digest of the whole catalogue (the hash of its buckets'),
// and the buckets' own.
func (c *Catalog) root() ([32]byte, [numBuckets][32]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var all [numBuckets][32]byte
	for b := range c.buckets {
		if c.buckets[b].dirty {
			c.buckets[b].h = c.bucketHash(b)
			c.buckets[b].dirty = false
		}
		all[b] = c.buckets[b].h
	}
	h := sha256.New()
	for _, b := range all {
		h.Write(b[:])
	}
	var out [32]byte
	h.Sum(out[:0])
	return out, all
}

// bucketHash hashes the summaries of the origins in bucket b. Caller
// holds c.mu.
func (c *Catalog) bucketHash(b int) [32]byte {
	sums := c.summariesLocked(func(p peer.ID) bool { return bucketOf(p) == b })
	h := sha256.New()
	var n [8]byte
	for _, s := range sums {
		h.Write([]byte(s.Origin))
		binary.BigEndian.PutUint64(n[:], uint64(s.Max))
		h.Write(n[:])
		binary.BigEndian.PutUint64(n[:], uint64(s.Count))
		h.Write(n[:])
		h.Write(s.XOR[:])
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

func (c *Catalog) summariesLocked(in func(peer.ID) bool) []Summary {
	var out []Summary
	for p, o := range c.origins {
		if in(p) && o.sum.Count > 0 {
			out = append(out, o.sum)
		}
	}
	slices.SortFunc(out, func(a, b Summary) int { return strings.Compare(a.Origin, b.Origin) })
	return out
}

// summaries are the summaries of the origins in the given buckets.
func (c *Catalog) summaries(buckets []int) []Summary {
	c.mu.Lock()
	defer c.mu.Unlock()
	want := map[int]bool{}
	for _, b := range buckets {
		want[b] = true
	}
	return c.summariesLocked(func(p peer.ID) bool { return want[bucketOf(p)] })
}

// since returns origin's records with a version above v (all with v < 0),
// at most limit of them, lowest versions first.
func (c *Catalog) since(origin peer.ID, v int64, limit int) []Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	o := c.origins[origin]
	if o == nil {
		return nil
	}
	var out []Record
	for _, e := range o.recs {
		if e.rec.Version > v {
			out = append(out, e.rec)
		}
	}
	slices.SortFunc(out, func(a, b Record) int { return cmpInt(a.Version, b.Version) })
	if len(out) > limit {
		out = out[:limit]
	}
	return out
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// summary is origin's summary here (zero when none).
func (c *Catalog) summary(origin string) Summary {
	p, err := peer.Decode(origin)
	if err != nil {
		return Summary{Origin: origin}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if o := c.origins[p]; o != nil {
		return o.sum
	}
	return Summary{Origin: origin}
}

// stated is this host's own current record of a kind and key (ok false:
// none yet).
func (c *Catalog) stated(self peer.ID, k Kind, key string) (Record, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	o := c.origins[self]
	if o == nil {
		return Record{}, false
	}
	e := o.recs[string(rune(k))+key]
	if e == nil {
		return Record{}, false
	}
	return e.rec, true
}

// statedKeys are the keys of this host's own records of a kind that are
// not deletions.
func (c *Catalog) statedKeys(self peer.ID, k Kind) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	o := c.origins[self]
	if o == nil {
		return nil
	}
	var out []string
	for _, e := range o.recs {
		if e.rec.Kind == k && len(e.rec.Data) > 0 {
			out = append(out, e.rec.Key)
		}
	}
	return out
}

// Verify checks records (see CheckRecord) once, for Load.
func Verify(rs []Record, cl *cluster.Config, now time.Time) ([]Verified, error) {
	cks, err := checkAll(rs, cl, now)
	if err != nil {
		return nil, err
	}
	out := make([]Verified, len(cks))
	for i, ck := range cks {
		out[i] = Verified{ck}
	}
	return out, nil
}

// Load stores verified records (loaded, not originated here: nothing is
// gossiped); it returns how many changed the catalogue.
func (c *Catalog) Load(vs []Verified) int {
	cks := make([]*checked, len(vs))
	for i, v := range vs {
		cks[i] = v.c
	}
	return c.apply(cks)
}

// Digest is the digest of the whole catalogue: two hosts with equal
// digests hold the same records.
func (c *Catalog) Digest() [32]byte {
	r, _ := c.root()
	return r
}
