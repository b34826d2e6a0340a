package chunk

import (
	"context"
	"time"

	"github.com/ipfs/go-cid"
)

// Store keeps chunks by content id. Implementations must be safe for
// concurrent use. Writes are not durable until Sync returns: a layer is made
// complete only after a Sync, so a crash can lose chunks but never a layer
// that was reported complete.
type Store interface {
	// Has reports whether the chunk is stored.
	Has(ctx context.Context, id cid.Cid) (bool, error)
	// HasMany reports, for each id in order, whether it is stored.
	HasMany(ctx context.Context, ids []cid.Cid) ([]bool, error)
	// Get returns a copy of the chunk's data, or an error wrapping
	// ErrNotFound, or ErrCorrupt for bytes damaged on disk.
	Get(ctx context.Context, id cid.Cid) ([]byte, error)
	// GetInto is Get reading into buf's storage when it has room for the
	// chunk (a new slice otherwise), so a server can reuse one buffer.
	GetInto(ctx context.Context, id cid.Cid, buf []byte) ([]byte, error)
	// Put stores verified blocks. Idempotent: storing a chunk again is a no-op
	// apart from cost. Only Blocks can be stored, and a Block is always
	// verified, so nothing from an untrusted source reaches the store unchecked.
	Put(ctx context.Context, blocks ...Block) error
	// Delete removes chunks. Idempotent: absent ids are not an error.
	Delete(ctx context.Context, ids ...cid.Cid) error
	// Walk calls fn for every stored chunk with its size, and with its data
	// when withData is set (valid only during the call, and as stored: a
	// chunk damaged on disk is handed over too, for the caller to verify).
	// Order is unspecified.
	// Chunks written or deleted during the walk may or may not be seen.
	Walk(ctx context.Context, withData bool, fn func(id cid.Cid, size int, data []byte) error) error
	// Stats counts what is stored, in one pass. With keep set, a chunk
	// keep refuses counts as dead too (gc would remove it): its bytes are
	// in DeadBytes.
	Stats(ctx context.Context, keep func(cid.Cid) bool) (StoreStats, error)
	// Sync makes every earlier write durable.
	Sync() error
}

// StoreStats describes a store's contents.
type StoreStats struct {
	Chunks      int64 `json:"chunks"`
	StoredBytes int64 `json:"stored_bytes"`
	// AllocatedBytes is the disk the chunk data takes (blocks allocated to
	// pack files); DeadBytes the part of it no live chunk uses, which gc
	// gives back, plus the bytes of the chunks a keep function refused
	// (only those for stores that do not keep packs).
	AllocatedBytes int64 `json:"allocated_bytes"`
	DeadBytes      int64 `json:"dead_bytes"`
}

// LayerState says whether every chunk of a layer is present and verified.
type LayerState string

const (
	// Complete: every chunk was present and verified when the state was
	// written, durably, after the chunks themselves were synced.
	Complete LayerState = "complete"
	// Incomplete: the manifest is known and some chunks may be missing; a
	// fetch resumes it.
	Incomplete LayerState = "incomplete"
)

// Layer is the record a daemon keeps for NAME:TAG.
type Layer struct {
	Name     string     `json:"name"`
	CID      string     `json:"cid"`
	State    LayerState `json:"state"`
	Size     int64      `json:"size"`
	Chunks   int        `json:"chunks"`
	Entries  int        `json:"entries"`
	Chunking string     `json:"chunking"`
	Added    time.Time  `json:"added"`
	// Who published NAME:TAG as CID, when, and their signature over that
	// mapping, so the host can pass the mapping on after a restart.
	Publisher string `json:"publisher,omitempty"`
	Published int64  `json:"published,omitempty"`
	Signature []byte `json:"signature,omitempty"`
	// Product is the licensed product the layer needs (part of the
	// signed mapping): activating it claims a seat first.
	Product string `json:"product,omitempty"`
	// Policy is the layer policy of the signed mapping (JSON), kept so the
	// mapping can be passed on after a restart.
	Policy []byte `json:"policy,omitempty"`
}

// Catalog keeps manifests and the NAME:TAG records that point at them.
type Catalog interface {
	// PutManifest stores an encoded manifest under its id. Idempotent.
	PutManifest(ctx context.Context, id cid.Cid, data []byte) error
	// GetManifest returns a stored manifest, or an error wrapping ErrNotFound.
	GetManifest(ctx context.Context, id cid.Cid) (*Manifest, error)
	// ManifestBytes returns a stored manifest's encoding, checked against
	// its id but not decoded (what a server sends), or ErrNotFound.
	ManifestBytes(ctx context.Context, id cid.Cid) ([]byte, error)
	// Manifests lists the ids of every stored manifest.
	Manifests(ctx context.Context) ([]cid.Cid, error)
	// DeleteManifest removes a manifest. Idempotent.
	DeleteManifest(ctx context.Context, id cid.Cid) error
	// PutLayer writes the record for l.Name durably (it syncs every earlier
	// write first, so a Complete record never points at lost chunks).
	PutLayer(ctx context.Context, l Layer) error
	// GetLayer returns the record for a name, or an error wrapping ErrNotFound.
	GetLayer(ctx context.Context, name Name) (Layer, error)
	// Layers lists every record, sorted by name.
	Layers(ctx context.Context) ([]Layer, error)
	// DeleteLayer removes the record for a name; ErrNotFound if absent.
	DeleteLayer(ctx context.Context, name Name) error
}

// NewLayer is the record of layer name as manifest id, added now.
func NewLayer(name Name, id cid.Cid, m *Manifest, state LayerState) Layer {
	return Layer{
		Name: name.String(), CID: id.String(), State: state,
		Size: m.Size(), Chunks: m.ChunkCount(), Entries: len(m.Entries),
		Chunking: m.Params.String(), Added: time.Now().UTC(),
	}
}
