// Package expose makes a layer visible at a host path and takes it away
// again: a FUSE view served from the chunk store with an overlay over the
// path above it, an overlay mount on a checkout, or a materialised directory
// swapped in with one atomic rename, plus the path maps (bind mounts or
// symlinks) that redirect original paths into an active layer. Every step
// is recorded in an Exposure, so it can be undone exactly after a restart.
// It never talks to the network and never decides what should be exposed
// where (package activate does).
package expose

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"golang.org/x/sys/unix"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/tree"
	"github.com/p2pimg/p2pimg/node/api"
)

// Config configures an Exposer.
type Config struct {
	Store   chunk.Store // the chunks that checkouts read
	DataDir string      // views/ and overlay/ live here
	Root    string      // map sources are under it
	Mode    api.Mode    // auto (default), fuse, overlay or materialized
	// Fetch, if set, supplies chunks a FUSE view reads but the store
	// lacks (lazy activation); without it such a read fails with EIO.
	Fetch ChunkFetcher
	// DiskMin: in fuse mode, files of at least this many bytes (and a
	// layer's only file) are disk images, written through block-level
	// deltas (0: 64 MiB).
	DiskMin int64
	// DiskReserve is the free space writes into disk images leave on the
	// data directory's disk (ENOSPC past it; 0: 16 MiB, negative: none),
	// as adds and fetches do.
	DiskReserve int64
	// OnReadError, if set, hears of every chunk a read through the FUSE
	// view of manifest cidStr could not get (for the host's state).
	OnReadError func(cidStr string, id cid.Cid, err error)
	// OnChunkRead, if set, hears of every chunk a read through the FUSE
	// view of manifest cidStr asks for (an access trace). Quick.
	OnChunkRead func(cidStr string, id cid.Cid)
	Log         *slog.Logger
}

// ChunkFetcher fetches one chunk of a layer from peers at once.
type ChunkFetcher interface {
	// FetchChunk returns chunk id of manifest layer, verified (and
	// stored, maybe just after it returns), or an error when no peer
	// supplied it before ctx ended.
	FetchChunk(ctx context.Context, layer, id cid.Cid) ([]byte, error)
}

// Exposer exposes layers on this host.
type Exposer struct {
	cfg       Config
	probeOnce sync.Once
	autoMode  api.Mode // chosen by the probe, for ModeAuto

	viewMu sync.Mutex // view checkouts are made and pruned one at a time
	mu     sync.Mutex
	views  map[string]*served // FUSE views this process serves, by manifest id
}

// New returns an Exposer; it touches nothing until used.
func New(cfg Config) *Exposer { return &Exposer{cfg: cfg, views: map[string]*served{}} }

// Exposure is what this host did to expose one layer, kept durably by the
// caller (its JSON is part of the activation record) so that it can be
// undone after a restart.
type Exposure struct {
	Mode    api.Mode `json:"mode,omitempty"`
	Path    string   `json:"path"`    // the full path under --root
	Exposed bool     `json:"exposed"` // Path shows the layer now (our mount or our directory)
	Backup  bool     `json:"backup"`  // materialized: Path's previous contents are at Path + baseSuffix
	Created bool     `json:"created"` // overlay: Path was made for the mount
	Maps    []Mapped `json:"maps,omitempty"`
	// Locked are the read-only binds over locked paths in an overlay.
	Locked []string `json:"locked,omitempty"`
	// View (fuse mode) names the FUSE view that is the overlay's lower
	// layer: the manifest id, with "@LAYER" when the view holds this
	// layer's writable disk images.
	View string `json:"view,omitempty"`
	// Lower (overlay mode) is the manifest whose checkout is the
	// overlay's lower layer.
	Lower string `json:"lower,omitempty"`
	// Disks are the disk images bound writable from the view over the
	// overlay (their writes go to block-level deltas).
	Disks []string `json:"disks,omitempty"`
	// Checkout (materialized mode) is the manifest checked out at Path,
	// which its files are compared with for local changes, and CheckedOut
	// when (Unix nanoseconds): a file changed since has a later ctime,
	// even if its size and mtime were put back.
	Checkout   string `json:"checkout,omitempty"`
	CheckedOut int64  `json:"checked_out,omitempty"`
}

// Held is one layer version this host exposes, or is bringing up or
// taking down: its chunks must stay, and its name may not be removed
// while Exposure.Exposed.
type Held struct {
	Layer string
	CID   string // the manifest exposed
	Trace string // the chunk of its access trace, if recorded here
	Exposure
}

const (
	newSuffix  = ".p2pimg-new"
	baseSuffix = ".p2pimg-base"
)

// exchange swaps two paths atomically.
func exchange(a, b string) error {
	return unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE)
}

// Expose shows layer (manifest cidStr, flattened to m) at e.Path in
// e.Mode. An overlay is mounted over the path, with locked (absolute
// paths in the layer) made read-only. A materialised view is checked out
// next to the path, then swapped in with one atomic rename; what was at
// the path before is kept beside it and comes back with Unexpose.
func (x *Exposer) Expose(ctx context.Context, e *Exposure, layer, cidStr string, m *chunk.Manifest, locked []string) error {
	if e.Mode == api.ModeFUSE {
		return x.mountFUSE(e, layer, cidStr, m, locked)
	}
	if e.Mode == api.ModeOverlay {
		return x.mountOverlay(ctx, e, layer, cidStr, m, locked)
	}
	if err := os.MkdirAll(filepath.Dir(e.Path), 0o755); err != nil {
		return fmt.Errorf("expose %s: %w", layer, err)
	}
	tmp := e.Path + newSuffix
	os.RemoveAll(tmp)
	if err := tree.Checkout(ctx, x.cfg.Store, m, tmp, tree.CheckoutOptions{Owners: os.Geteuid() == 0}); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("expose %s: %w", layer, err)
	}
	e.Checkout, e.CheckedOut = cidStr, time.Now().UnixNano()
	_, err := os.Lstat(e.Path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.Rename(tmp, e.Path); err != nil {
			return fmt.Errorf("expose %s: %w", layer, err)
		}
		e.Exposed = true
		return nil
	case err != nil:
		return fmt.Errorf("expose %s: %w", layer, err)
	}
	if err := exchange(tmp, e.Path); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("swap %s in: %w", e.Path, err)
	}
	wasOurs := e.Exposed
	e.Exposed = true
	if wasOurs { // tmp now holds our previous exposure, not the host's own
		return os.RemoveAll(tmp)
	}
	if err := os.Rename(tmp, e.Path+baseSuffix); err != nil {
		return fmt.Errorf("expose %s: keep what was at %s: %w", layer, e.Path, err)
	}
	e.Backup = true
	return nil
}

// DataDir is the daemon's data directory, where views and writes live.
func (x *Exposer) DataDir() string { return x.cfg.DataDir }

// ErrWrittenMeanwhile: an exposure was written into after its changes
// were looked at and before it was taken down. Unexpose then keeps the
// writes, and the exposure stays recorded as exposed: the caller mounts it
// again (it is not Live) and refuses what it was doing.
var ErrWrittenMeanwhile = errors.New("written into while it was being taken down")

// Unexpose puts back what was at the path before the layer. Unless
// discard, the writes of an overlaid exposure are dropped only if there
// are none once it is unmounted (the caller looked before, but a process
// may have written since): else ErrWrittenMeanwhile.
func (x *Exposer) Unexpose(e *Exposure, layer string, discard bool) error {
	if e.Mode == api.ModeFUSE {
		if err := x.unmountFUSE(e, layer, discard); err != nil {
			return err
		}
		e.Exposed = false
		return nil
	}
	if e.Mode == api.ModeOverlay {
		if err := x.unmountOverlay(e, layer, discard); err != nil {
			return err
		}
		e.Exposed = false
		return nil
	}
	if !e.Backup {
		if err := os.RemoveAll(e.Path); err != nil {
			return fmt.Errorf("unexpose %s: %w", layer, err)
		}
		e.Exposed = false
		return nil
	}
	base := e.Path + baseSuffix
	if err := exchange(base, e.Path); err != nil {
		return fmt.Errorf("restore %s: %w", e.Path, err)
	}
	e.Backup, e.Exposed = false, false
	return os.RemoveAll(base) // it holds the layer now
}
