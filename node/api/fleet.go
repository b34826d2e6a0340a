package api

import (
	"fmt"
	"strings"
	"time"
)

// FleetSchema is the version of the Fleet document's shape: it grows by
// new fields; a field that changes meaning or goes away bumps it.
const FleetSchema = 1

// Fleet is GET /v1/fleet: the cluster as this host sees it, for the web
// view and scripts. Lists are never null.
type Fleet struct {
	Schema  int          `json:"schema"`
	Time    time.Time    `json:"time"`
	Cluster string       `json:"cluster"`
	Self    string       `json:"self"` // peer id of the host answering
	Hosts   []FleetHost  `json:"hosts"`
	Layers  []FleetLayer `json:"layers"`
	// Transfers are the fetches under way on every host, as each reports.
	Transfers []Transfer `json:"transfers"`
	// Peers are this host's connections, with chunk bytes and rates.
	Peers []FleetPeer `json:"peers"`
	// Seats are the licences and held seats (empty when the keepers
	// could not be asked: SeatsError says why).
	Seats      LicenseList `json:"seats"`
	SeatsError string      `json:"seats_error,omitempty"`
}

// FleetHost is one host of the fleet.
type FleetHost struct {
	ID       string            `json:"id"`
	Name     string            `json:"name"`
	Labels   map[string]string `json:"labels"`
	Reach    Reach             `json:"reach"`
	LastSeen time.Time         `json:"last_seen,omitzero"`
	// HeldLayers and HeldBytes are the layers (the newest version of
	// each name) the host holds complete and their size, from what it
	// announced.
	HeldLayers int   `json:"held_layers"`
	HeldBytes  int64 `json:"held_bytes"`
	// Store is the host's chunk store and disk: counted now for the host
	// answering, as last announced for the others (absent: none heard).
	Store *StoreUse `json:"store,omitempty"`
}

// StoreUse is a host's chunk store and the disk under it.
type StoreUse struct {
	// At is when the figures were counted (another host announces them
	// again when one moves by more than 1%, at least 1 MiB and at most
	// 64 MiB, looking at most every 30s; and every 15 minutes anyway).
	At time.Time `json:"at"`
	Stats
	DiskFree  int64 `json:"disk_free"`
	DiskTotal int64 `json:"disk_total"`
}

// FleetLayer is one row of the matrix: a layer name's newest version and
// each host's state for it.
type FleetLayer struct {
	Name      string      `json:"name"`
	CID       string      `json:"cid"`
	Size      int64       `json:"size"`
	Product   string      `json:"product,omitempty"`
	Published time.Time   `json:"published,omitzero"`
	Cells     []FleetCell `json:"cells"`
	// Summary counts the hosts by state ("active": 37, ...), Hosts those
	// with a state for the layer, and Unreachable those of them not heard
	// from lately (their states may be out of date).
	Summary     Summary `json:"summary"`
	Hosts       int     `json:"hosts"`
	Unreachable int     `json:"unreachable"`
}

// FleetCell is one host's state for one layer.
type FleetCell struct {
	Host   string `json:"host"`
	State  State  `json:"state,omitempty"` // empty: the host only holds it
	Detail string `json:"detail,omitempty"`
	At     string `json:"at,omitempty"`
	Mode   Mode   `json:"mode,omitempty"`
	// Holds is complete or partial when the host holds this version.
	Holds string `json:"holds,omitempty"`
	Done  int64  `json:"done,omitempty"`
	Total int64  `json:"total,omitempty"`
	Rate  int64  `json:"rate,omitempty"` // bytes per second, while fetching
	Peers int    `json:"peers,omitempty"`
	// Stale: the host is unreachable or gone, so this may be out of date.
	Stale bool `json:"stale,omitempty"`
	// Conflict is the policy conflict that keeps the host from syncing
	// the layer (the layer's rule against the host's).
	Conflict string `json:"conflict,omitempty"`
}

// Transfer is a fetch under way on some host.
type Transfer struct {
	Host  string `json:"host"`
	Layer string `json:"layer"`
	Done  int64  `json:"done"`
	Total int64  `json:"total"`
	Rate  int64  `json:"rate"` // bytes per second
	Peers int    `json:"peers"`
}

// FleetPeer is one connection of the host answering.
type FleetPeer struct {
	Peer
	Name    string `json:"name,omitempty"`
	RateIn  int64  `json:"rate_in"`  // chunk bytes per second received
	RateOut int64  `json:"rate_out"` // chunk bytes per second served
}

// Summary counts hosts by their state for one layer.
type Summary map[State]int

// summaryOrder is the order states are named in a summary.
var summaryOrder = []State{StateActive, StateFetching, StateRequested, StateWaitingSeat, StateDeactivating, StateFailed, StateInactive}

// Hosts is how many hosts the summary counts.
func (s Summary) Hosts() int {
	n := 0
	for _, c := range s {
		n += c
	}
	return n
}

// String reads "active 37/40, fetching 2, failed 1": active out of every
// host with a state (left out when the layer is inactive everywhere),
// then the other states present.
func (s Summary) String() string {
	n := s.Hosts()
	if n == 0 {
		return "not activated"
	}
	var parts []string
	if s[StateActive] > 0 || s[StateInactive] < n {
		parts = append(parts, fmt.Sprintf("active %d/%d", s[StateActive], n))
	}
	for _, st := range summaryOrder[1:] {
		if s[st] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", st, s[st]))
		}
	}
	return strings.Join(parts, ", ")
}
