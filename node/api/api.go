// Package api holds the types of the daemon's local API: HTTP/JSON over a
// unix socket, versioned under /v1/. The daemon serves them (package node)
// and the CLI and tests call them (package client). Long operations answer
// with newline-delimited JSON: progress and warning events, then one final
// result or error event.
package api

import (
	"encoding/json"
	"time"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/tree"
	"github.com/p2pimg/p2pimg/policy"
)

// Version prefix of every path.
const Version = "/v1"

// Error codes.
const (
	CodeBadRequest = "bad_request"
	CodeNotFound   = "not_found"
	CodeConflict   = "conflict"
	CodeStarting   = "starting"
	CodeNoSpace    = "no_space"
	CodeInternal   = "internal"
)

// Error is how the daemon reports a failure.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }

// Event is one line of a streamed answer.
type Event struct {
	Progress *Progress `json:"progress,omitempty"`
	Warning  string    `json:"warning,omitempty"`
	Result   any       `json:"result,omitempty"`
	Error    *Error    `json:"error,omitempty"`
}

// Progress of a long operation.
type Progress struct {
	Phase string `json:"phase"`
	Done  int64  `json:"done"`
	Total int64  `json:"total"`
	Peers int    `json:"peers,omitempty"`
}

// FetchRequest is POST /v1/fetch.
type FetchRequest struct {
	Name string `json:"name"`
}

// FetchResult is the result of a fetch.
type FetchResult struct {
	Layer         chunk.Layer      `json:"layer"`
	FetchedChunks int              `json:"fetched_chunks"`
	FetchedBytes  int64            `json:"fetched_bytes"`
	Peers         map[string]int64 `json:"peers,omitempty"` // bytes received from each
	Seconds       float64          `json:"seconds"`         // the whole fetch
	CommitSeconds float64          `json:"commit_seconds"`  // of which: making it durable (fsync)
}

// Identity is GET /v1/id.
type Identity struct {
	PeerID  string   `json:"peer_id"`
	Addrs   []string `json:"addrs"`
	Cluster string   `json:"cluster"`
	Open    bool     `json:"open_cluster"`
	// Protocols are the p2pimg libp2p protocols this host speaks.
	Protocols []string `json:"protocols"`
}

// Peer is one entry of GET /v1/peers.
type Peer struct {
	PeerID    string   `json:"peer_id"`
	Addrs     []string `json:"addrs"`
	LatencyMS float64  `json:"latency_ms"`
	BytesIn   int64    `json:"bytes_in"`  // chunk bytes received from it
	BytesOut  int64    `json:"bytes_out"` // chunk bytes served to it
}

// ClusterLayer is one entry of GET /v1/catalog: the cluster's view of a layer.
type ClusterLayer struct {
	Name      string            `json:"name"`
	CID       string            `json:"cid"`
	Size      int64             `json:"size"`
	Publisher string            `json:"publisher"`
	Published time.Time         `json:"published"`
	Product   string            `json:"product,omitempty"`
	Holders   map[string]string `json:"holders"` // peer id -> complete | partial
	// Unreachable are the holders not heard from for a while (or gone).
	Unreachable []string `json:"unreachable,omitempty"`
}

// Status is GET /v1/status.
type Status struct {
	State   DaemonState `json:"state"`
	PID     int         `json:"pid"`
	DataDir string      `json:"data_dir"`
	Started time.Time   `json:"started"`
	Version string      `json:"version"`
	// Web is the URL of the daemon's web view (empty: not served).
	Web string `json:"web,omitempty"`
	// Goroutines and HeapBytes show whether a long-running daemon grows.
	Goroutines int    `json:"goroutines"`
	HeapBytes  uint64 `json:"heap_bytes"`
}

// AddRequest is POST /v1/layers.
type AddRequest struct {
	Name      string `json:"name"`
	Path      string `json:"path"`                 // absolute, read by the daemon
	Chunking  string `json:"chunking,omitempty"`   // cdc, fixed, or "" for the default per input
	ChunkSize string `json:"chunk_size,omitempty"` // e.g. 64K
	Hash      string `json:"hash,omitempty"`       // sha2-256 (default) or blake3
	Product   string `json:"product,omitempty"`    // licensed product the layer needs
	Policy    string `json:"policy,omitempty"`     // layer policy (TOML text)
}

// AddResult is the result of an add.
type AddResult struct {
	Layer     chunk.Layer   `json:"layer"`
	NewChunks int           `json:"new_chunks"`
	NewBytes  int64         `json:"new_bytes"`
	Skipped   []SkippedPath `json:"skipped,omitempty"`
}

// SkippedPath is a path an add left out.
type SkippedPath struct {
	Path   string `json:"path"`
	Reason string `json:"reason"`
}

// CheckoutRequest is POST /v1/checkout.
type CheckoutRequest struct {
	Name  string `json:"name"`
	Dir   string `json:"dir"` // absolute
	Force bool   `json:"force,omitempty"`
}

// CheckoutResult is the result of a checkout.
type CheckoutResult struct {
	Layer chunk.Layer `json:"layer"`
	Dir   string      `json:"dir"`
}

// GCResult is POST /v1/gc.
type GCResult struct {
	RemovedChunks    int   `json:"removed_chunks"`
	RemovedBytes     int64 `json:"removed_bytes"`
	RemovedManifests int   `json:"removed_manifests"`
	KeptChunks       int   `json:"kept_chunks"`
	ReclaimedBytes   int64 `json:"reclaimed_bytes"` // disk given back: packs removed, dead ranges punched out
	// RemovedViews are overlay-mode view checkouts no exposure used.
	RemovedViews     int   `json:"removed_views,omitempty"`
	RemovedViewBytes int64 `json:"removed_view_bytes,omitempty"`
}

// VerifyResult is the result of POST /v1/verify.
type VerifyResult struct {
	Checked        int64    `json:"checked"`
	Corrupt        []string `json:"corrupt,omitempty"` // removed
	LayersAffected []string `json:"layers_affected,omitempty"`
}

// Stats is GET /v1/stats.
type Stats struct {
	Layers       int     `json:"layers"`
	Chunks       int64   `json:"chunks"`
	LogicalBytes int64   `json:"logical_bytes"`
	StoredBytes  int64   `json:"stored_bytes"`
	DedupRatio   float64 `json:"dedup_ratio"`
	// AllocatedBytes is the disk the store's packs take; DeadBytes what
	// gc would give back of it now: the chunks no kept layer references,
	// and the space of removed chunks not given back yet (a chunk an add
	// is writing at that moment counts as dead).
	AllocatedBytes int64 `json:"allocated_bytes"`
	DeadBytes      int64 `json:"dead_bytes"`
	// ViewBytes is the disk the overlay-mode view checkouts use, beside
	// the store (fuse mode keeps none).
	ViewBytes int64 `json:"view_bytes"`
	// DeltaBytes is the disk the disk images' copy-on-write deltas use
	// (what was written into activated disk images); UpperBytes the
	// overlays' upper directories (what was written into activated trees).
	DeltaBytes int64 `json:"delta_bytes"`
	UpperBytes int64 `json:"upper_bytes"`
}

// PartitionRequest is POST /v1/partition: the peers this host is cut off
// from (empty: heal).
type PartitionRequest struct {
	Peers []string `json:"peers"`
}

// ActivateRequest is POST /v1/activate. Signed, when set, is an activation
// signed by an operator key (the CLI signs it); otherwise the daemon signs
// with its own key, which may only act on its own host (Hosts "self").
type ActivateRequest struct {
	Layer  string          `json:"layer,omitempty"`
	At     string          `json:"at,omitempty"`
	Hosts  string          `json:"hosts,omitempty"`
	Maps   []string        `json:"maps,omitempty"`
	Lazy   bool            `json:"lazy,omitempty"` // active once the manifest is here (fuse mode)
	Op     Op              `json:"op,omitempty"`
	Signed json.RawMessage `json:"signed,omitempty"`
}

// ActivateResult says what was published and which known hosts it selects.
type ActivateResult struct {
	Activation json.RawMessage `json:"activation"`
	Time       int64           `json:"time"`
	Targets    []string        `json:"targets"`
}

// HostActivation is one cell of GET /v1/activations: a host's state for a layer.
type HostActivation struct {
	Host   string `json:"host"`
	Layer  string `json:"layer"`
	CID    string `json:"cid"`
	At     string `json:"at,omitempty"`
	State  State  `json:"state"`
	Detail string `json:"detail,omitempty"`
	Time   int64  `json:"time"`
	Mode   Mode   `json:"mode,omitempty"`
	// Trace is the chunk holding the host's access trace of CID (the
	// chunks read first after it exposed CID lazily), if it recorded one.
	Trace string `json:"trace,omitempty"`
	// Reach says whether the host is still heard from, and LastSeen when it
	// last was (as this host learned it).
	Reach    Reach     `json:"reach"`
	LastSeen time.Time `json:"last_seen,omitzero"`
	// HostName and Labels are what the host says of itself.
	HostName string            `json:"host_name,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
	// Done, Total and Peers are a fetch's bytes and sources (fetching only).
	Done  int64 `json:"done,omitempty"`
	Total int64 `json:"total,omitempty"`
	Peers int   `json:"peers,omitempty"`
}

// CommonResult is GET /v1/common?layer=A&layer=B...
type CommonResult struct {
	Layers []string `json:"layers"`
	chunk.CommonReport
}

// LicenseInstallRequest is POST /v1/license/install: the licence's file form.
type LicenseInstallRequest struct {
	License string `json:"license"`
}

// LicenseInfo describes an installed licence and its seats in use.
type LicenseInfo struct {
	ID      string    `json:"id"`
	Product string    `json:"product"`
	Seats   int       `json:"seats"`
	Share   int       `json:"share"`
	KeyID   string    `json:"key_id"`
	Issued  time.Time `json:"issued"`
	Expires time.Time `json:"expires,omitzero"`
	Used    int       `json:"used"`
	Free    int       `json:"free"`
}

// ClaimRequest is POST /v1/license/claim.
type ClaimRequest struct {
	Product  string `json:"product"`
	Consumer string `json:"consumer"`
	// Wait retries while no seat is free, until the request's timeout.
	Wait bool `json:"wait,omitempty"`
}

// Grant is a seat held by a host: its seat number, fencing token, the
// consumers sharing it and until when it is valid.
type Grant struct {
	Product    string    `json:"product"`
	Seat       int       `json:"seat"`
	Token      uint64    `json:"token"`
	Host       string    `json:"host"`
	Consumers  []string  `json:"consumers,omitempty"`
	ValidUntil time.Time `json:"valid_until,omitzero"`
	Valid      bool      `json:"valid,omitempty"`
}

// ReleaseRequest is POST /v1/license/release: a consumer's use of its
// seat, or a whole seat by token.
type ReleaseRequest struct {
	Product  string `json:"product,omitempty"`
	Consumer string `json:"consumer,omitempty"`
	Token    uint64 `json:"token,omitempty"`
}

// ReleaseResult lists the seats the release freed.
type ReleaseResult struct {
	Freed []Grant `json:"freed"`
}

// CheckResult is GET /v1/license/check?token=N.
type CheckResult struct {
	Token   uint64 `json:"token"`
	Current bool   `json:"current"`
	Reason  string `json:"reason,omitempty"`
	Seat    *Grant `json:"seat,omitempty"`
}

// LicenseList is GET /v1/license: licences, every held seat, and the
// grants this host holds.
type LicenseList struct {
	Index uint64 `json:"index"`
	// Leader is the keepers' leader as this host knows it (empty: none).
	Leader   string        `json:"leader,omitempty"`
	Licenses []LicenseInfo `json:"licenses"`
	Holders  []Grant       `json:"holders"`
	Held     []Grant       `json:"held"`
}

// PolicyRequest is POST /v1/policy/layer (Name set) or /v1/policy/host.
type PolicyRequest struct {
	Name   string `json:"name,omitempty"`
	Policy string `json:"policy"` // TOML text
}

// PolicyResult is the effective policy of a layer on a host, or the
// conflict that refuses syncing it.
type PolicyResult struct {
	Layer       string            `json:"layer"`
	Host        string            `json:"host"`
	LayerPolicy policy.Layer      `json:"layer_policy"`
	HostPolicy  policy.Host       `json:"host_policy"`
	Effective   *policy.Effective `json:"effective,omitempty"`
	Conflict    *policy.Conflict  `json:"conflict,omitempty"`
}

// DiffResult is GET /v1/diff/NAME: how the exposed view differs from the layer.
type DiffResult struct {
	Layer   string        `json:"layer"`
	CID     string        `json:"cid"`
	Path    string        `json:"path"`
	Changes []tree.Change `json:"changes"`
}

// CommitRequest is POST /v1/commit: an overlayfs upper directory captured
// as a layer on top of Base, or the changes made to an activated layer.
type CommitRequest struct {
	Name  string `json:"name"`
	Base  string `json:"base"`
	Upper string `json:"upper"` // absolute, read by the daemon
	// Activation, instead of Base and Upper: the layer active on this
	// host whose local changes (overlay upper, disk-image deltas) become
	// the new layer, on top of the version exposed.
	Activation string `json:"activation,omitempty"`
}

// SplitRequest is POST /v1/split.
type SplitRequest struct {
	Layers []string `json:"layers"`
	Common string   `json:"common"`
}

// SplitResult is the common layer and the new versions of the inputs.
type SplitResult struct {
	Common chunk.Layer   `json:"common"`
	Layers []chunk.Layer `json:"layers"`
}

// RebaseRequest is POST /v1/rebase: re-point a thin layer at a new base.
type RebaseRequest struct {
	Name string `json:"name"`
	Onto string `json:"onto"`
}

// ImportRequest is POST /v1/import: a docker save tar or an OCI layout.
type ImportRequest struct {
	Path string `json:"path"`           // absolute, read by the daemon
	Name string `json:"name,omitempty"` // NAME[:TAG] of the top layer; default the image's reference
}

// ImportResult lists the layers made, base first.
type ImportResult struct {
	Layers []chunk.Layer `json:"layers"`
}

// ForgetRequest is POST /v1/cluster/forget: drop what a host said of
// itself from this host's catalogue.
type ForgetRequest struct {
	Peer string `json:"peer"`
}

// ClusterReload is the answer to POST /v1/cluster/reload: the cluster,
// members and PSK files were read again and their lists applied.
type ClusterReload struct {
	// Members counts the peer ids allowed in now (0: an open cluster).
	Members int `json:"members"`
	// Disconnected are the peers whose connections were closed because
	// they are no longer members.
	Disconnected []string `json:"disconnected"`
}
