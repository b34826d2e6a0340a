package api

import "encoding/json"

// KeeperList is GET /v1/license/keepers: the keepers as the Raft
// configuration has them (the truth once any change was made), beside the
// cluster file's list (which seeds the first configuration).
type KeeperList struct {
	// Index is the Raft configuration's index: a keeper change names the
	// configuration it applies to.
	Index   uint64   `json:"index"`
	Leader  string   `json:"leader,omitempty"`
	Keepers []Keeper `json:"keepers"`
	// File is the cluster file's keepers.
	File []string `json:"file"`
	// Differs: the cluster file's keepers are not the configuration's.
	Differs bool `json:"differs"`
	// Change is the last keeper change this host knows (signed, JSON).
	Change json.RawMessage `json:"change,omitempty"`
}

// Keeper is one host of KeeperList: in the Raft configuration (Raft is
// "voter" or "nonvoter") or only in the cluster file (Raft is "").
type Keeper struct {
	ID     string `json:"id"`
	Raft   string `json:"raft"`
	InFile bool   `json:"in_file"`
	Leader bool   `json:"leader"`
	// Connected: this host has a connection to it now (always true of itself).
	Connected bool `json:"connected"`
}

// KeeperChangeRequest is POST /v1/license/keepers: an operator's signed
// keeper change (JSON), which the daemon passes to the keepers' leader.
type KeeperChangeRequest struct {
	Signed json.RawMessage `json:"signed"`
}
