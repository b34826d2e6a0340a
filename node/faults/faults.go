// Package faults is the one switchboard of fault injection: a lying or
// stalled chunk server, a gossip flood, a skewed keeper clock and the seat
// journal the fault tests check. Tests and benchmarks set it (the CLI
// through hidden --test-* flags); in production it is nil, and each
// service checks it in one place.
package faults

import "time"

// Faults switches on misbehaviour for tests. A nil *Faults is production.
type Faults struct {
	// CorruptServe flips a byte in every chunk this host serves (and in
	// every manifest its registry relays).
	CorruptServe bool
	// StallServe never answers chunk requests (the host still says it has
	// the chunks), and the registry blob relay stops sending a blob after
	// its first chunk, keeping the stream open.
	StallServe bool
	// GarbageServe answers every chunk request with items of this many
	// random bytes (a peer that breaks the protocol).
	GarbageServe int
	// MissingServe answers every manifest, have and chunk request with
	// "not here", while the host still says in gossip that it holds its
	// layers.
	MissingServe bool
	// GossipFlood publishes this host's snapshot as fast as it can.
	GossipFlood bool
	// ClockOffset shifts the clock this host's keeper stamps seat commands
	// with (clock skew between keepers).
	ClockOffset time.Duration
	// SeatJournal, when set, is a file where this host appends every
	// interval during which it treated a seat grant as valid: the record
	// the seat fault tests check for over-allocation.
	SeatJournal string
	// ChunkTrace, when set, is told of every chunk this host serves and
	// every fetched chunk it stores, as it happens: the record the fan-out
	// test counts (how often the seed sent a chunk before every fetcher
	// had it). It must be quick and safe for concurrent use.
	ChunkTrace func(ChunkEvent)
}

// ChunkEvent is one chunk served to a peer, or fetched from one and stored.
type ChunkEvent struct {
	Stored bool   // false: served to Peer; true: fetched from Peer and stored
	Peer   string // the peer id
	CID    string
}

// Get is f, or the zero Faults (nothing injected) when f is nil.
func (f *Faults) Get() Faults {
	if f == nil {
		return Faults{}
	}
	return *f
}
