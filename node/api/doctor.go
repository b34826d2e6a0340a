package api

import "time"

// Doctor is GET /v1/doctor: what this host can learn of the cluster's
// health from its peers, for `p2pimg doctor`. Each connected peer and
// each keeper is asked (probe protocol) for its clock, cluster name and
// digests of its members list and PSK; lists are never null.
type Doctor struct {
	Time    time.Time `json:"time"`
	Self    string    `json:"self"`
	Cluster string    `json:"cluster"`
	// Members counts this host's members list (0: an open cluster);
	// MembersDigest and PSKDigest identify it and the PSK without
	// revealing the key ("" when there is none).
	Members       int    `json:"members"`
	MembersDigest string `json:"members_digest"`
	PSKDigest     string `json:"psk_digest"`
	// Peers are the keepers and the connected peers, each probed (at most
	// 64 in all: Unprobed counts the connected peers left out).
	Peers    []DoctorPeer `json:"peers"`
	Unprobed int          `json:"unprobed"`
	// NeverSeen are members this host has never had a connection to nor
	// heard of over gossip since it started.
	NeverSeen []string `json:"never_seen"`
	// Refused are hosts that reached this one but are not members.
	Refused []RefusedPeer `json:"refused"`
	// DialFailures are configured peers (--peer) this host cannot reach.
	DialFailures []DialFailure `json:"dial_failures"`
}

// DoctorPeer is one peer probed by the doctor.
type DoctorPeer struct {
	ID        string `json:"id"`
	Name      string `json:"name,omitempty"`
	Keeper    bool   `json:"keeper"`
	Connected bool   `json:"connected"`
	// Error is why the probe got no answer (then the fields below are zero).
	Error string `json:"error,omitempty"`
	// RTTMillis is the probe's round trip; ClockOffsetMillis how far the
	// peer's clock is ahead of this host's (negative: behind), estimated
	// at the middle of the round trip, so within RTTMillis/2.
	RTTMillis         float64 `json:"rtt_ms"`
	ClockOffsetMillis float64 `json:"clock_offset_ms"`
	Cluster           string  `json:"cluster,omitempty"`
	Members           int     `json:"members"`
	MembersDigest     string  `json:"members_digest,omitempty"`
	PSKDigest         string  `json:"psk_digest,omitempty"`
}

// RefusedPeer is a host the connection gater turned away: not a member.
type RefusedPeer struct {
	ID    string    `json:"id"`
	Addr  string    `json:"addr"`
	Count int       `json:"count"`
	Last  time.Time `json:"last"`
}

// DialFailure is a configured peer this host could not connect to.
type DialFailure struct {
	ID    string    `json:"id"`
	Addrs []string  `json:"addrs"`
	Error string    `json:"error"`
	Since time.Time `json:"since"` // first failure since the last success
}
