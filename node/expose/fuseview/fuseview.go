// Package fuseview serves a layer (a flattened stack) as a read-only FUSE
// file system straight from the chunk store: one copy of the bytes on the
// host, nothing checked out. Directories, files, symlinks, modes, owners
// and times come from the manifest; all-zero chunks read as zeros without
// touching the store and are reported as holes (SEEK_HOLE); the content is
// immutable, so the kernel may cache entries, attributes and pages for as
// long as the view is mounted. A chunk missing from the store is asked of
// an optional Fetcher (the lazy-activation hook) and is never served
// unverified. It never talks to the network itself and never decides
// what is mounted where (package expose does).
package fuseview

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/ipfs/go-cid"
	"golang.org/x/sync/singleflight"
)

// Chunks is where the view reads chunk data.
type Chunks interface {
	// GetInto returns the chunk's data (in buf's storage when it fits),
	// an error wrapping chunk.ErrNotFound when absent, or chunk.ErrCorrupt
	// for bytes damaged on disk. Chunks in the store were verified when
	// stored and are CRC-checked when read.
	GetInto(ctx context.Context, id cid.Cid, buf []byte) ([]byte, error)
}

// Fetcher fetches one missing chunk at once (ahead of any background
// fetch), verifies it against its id and returns its bytes (storing them,
// maybe just after it returns).
// It must return within the context's deadline; an error means no peer
// supplied a verified copy. Safe for concurrent use.
type Fetcher interface {
	FetchChunk(ctx context.Context, id cid.Cid) ([]byte, error)
}

// Config configures a view.
type Config struct {
	Store Chunks
	// Fetch, if set, is asked for chunks missing from Store; without it
	// a read of a missing chunk fails with EIO.
	Fetch Fetcher
	// FetchTimeout bounds one on-demand fetch (default 10 s): after it the
	// read fails with EIO, it never hangs.
	FetchTimeout time.Duration
	// OnReadError, if set, is told of every chunk a read could not get
	// (for the host's state detail).
	OnReadError func(id cid.Cid, err error)
	// OnChunk, if set, is told of every chunk a read asks for (repeats
	// included), in order: an access trace. It must be quick.
	OnChunk func(id cid.Cid)
	// DeltaDir, if set, makes the layer's disk images writable: writes to
	// them go to a block-level delta per file kept under DeltaDir, and
	// reads merge it over the layer. Without it the view is read-only.
	DeltaDir string
	// DiskMin: files of at least this many bytes are disk images (default
	// 64 MiB); a layer's only file always is.
	DiskMin int64
	// Reserve is the free space disk-image writes leave on DeltaDir's
	// disk: a write that would take it fails with ENOSPC (0: none).
	Reserve int64
	// Base names what the deltas apply to (the manifest id): a delta kept
	// for another base is discarded.
	Base string
	// Name is the file system's source name in the mount table.
	Name string
	Log  *slog.Logger
}

// View is one mounted layer.
type View struct {
	dir    string
	server *fuse.Server
	cfg    Config
	hash   uint64

	zmu     sync.Mutex
	zeroIDs map[uint32]cid.Cid
	cache   *lru.Cache[cid.Cid, []byte] // recently read chunks: a chunk straddling two reads is read once
	flight  singleflight.Group          // concurrent reads of one chunk get it once

	statsMu sync.Mutex
	stats   Stats

	disks   map[string]*diskNode // writable disk images, by path
	space   *spaceGuard          // what their writes leave free
	readers *readers

	stop context.CancelFunc // called when Unmount begins: fetches for reads end
}

// Stats counts what reads through a view did.
type Stats struct {
	StoreReads   int64 // chunks read from the store
	Fetched      int64 // chunks fetched on demand
	FetchedBytes int64
	ReadErrors   int64 // reads that failed with EIO
}

const defaultDiskMin = 64 << 20

// cacheTTL: how long the kernel may keep entries and attributes. The
// view never changes while mounted, so this is only a bound on memory.
const cacheTTL = time.Hour

// Stats returns the view's counters.
func (v *View) Stats() Stats {
	v.statsMu.Lock()
	defer v.statsMu.Unlock()
	return v.stats
}

func (v *View) count(f func(*Stats)) {
	v.statsMu.Lock()
	f(&v.stats)
	v.statsMu.Unlock()
}
