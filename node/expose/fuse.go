package expose

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ipfs/go-cid"
	"golang.org/x/sys/unix"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/expose/fuseview"
)

// fuseDir holds the mount points of the FUSE views, one per manifest;
// deltaDir the disk images' deltas, one directory per layer.
const (
	fuseDir  = "fuse"
	deltaDir = "delta"
)

// served is one FUSE view this process serves, and the layers whose
// overlays stand on it.
type served struct {
	view  *fuseview.View
	users map[string]*Exposure // by layer
}

// layerFetcher fetches the chunks of one layer.
type layerFetcher struct {
	f     ChunkFetcher
	layer cid.Cid
}

func (l layerFetcher) FetchChunk(ctx context.Context, id cid.Cid) ([]byte, error) {
	return l.f.FetchChunk(ctx, l.layer, id)
}

// fuseViewDir is where the FUSE view of manifest cidStr is mounted.
func (x *Exposer) fuseViewDir(cidStr string) string {
	return filepath.Join(x.cfg.DataDir, fuseDir, cidStr)
}

// mountFUSE serves the layer from the store at its view directory and
// mounts an overlay over e.Path with the view as its lower layer. Writes
// made before survive when the same version is mounted again after the
// view was lost (a restart); otherwise they are dropped, as for overlays.
// The layer's disk images are bound from the view over the overlay, so
// their writes go to the view's block-level deltas, not to a copy-up.
func (x *Exposer) mountFUSE(e *Exposure, layer, cidStr string, m *chunk.Manifest, locked []string) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	key := cidStr
	if fuseview.HasDisks(m, x.cfg.DiskMin) {
		key = cidStr + "@" + viewTag(layer) // deltas are this layer's own
	}
	keep := e.View == key && !x.liveLocked(e)
	s, err := x.serveLocked(key, cidStr, layer, m)
	if err != nil {
		return fmt.Errorf("expose %s: %w", layer, err)
	}
	s.users[layer] = e
	old := e.View
	e.View = key
	err = x.overlayOn(e, layer, s.view.Dir(), locked, keep, s.view.Disks())
	if old != "" && old != key {
		// A previous version's view, released only now that the overlay
		// above it is gone: a view still under an overlay cannot end.
		x.releaseLocked(old, layer)
	}
	if err != nil {
		return fmt.Errorf("expose %s: %w", layer, err)
	}
	return nil
}

// viewTag names a layer in a view's directory name, which is part of an
// overlay's lowerdir option and so must hold no ':' or ','.
func viewTag(layer string) string {
	h := sha256.Sum256([]byte(layer))
	return hex.EncodeToString(h[:8])
}

// layerDir is a layer name as one path component.
func layerDir(layer string) string { return strings.ReplaceAll(layer, "/", "_") }

// DeltaDir is where the block-level deltas of a layer's disk images are
// kept (one directory per version exposed).
func (x *Exposer) DeltaDir(layer string) string {
	return filepath.Join(x.cfg.DataDir, deltaDir, layerDir(layer))
}

// serveLocked returns the view by key, mounting it if this process does
// not serve it yet (clearing a dead mount a killed daemon left).
func (x *Exposer) serveLocked(key, cidStr, layer string, m *chunk.Manifest) (*served, error) {
	if s, ok := x.views[key]; ok {
		return s, nil
	}
	dir := x.fuseViewDir(key)
	if Mounted(dir) {
		unix.Unmount(dir, unix.MNT_DETACH)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	cfg := fuseview.Config{Store: x.cfg.Store, Name: "p2pimg:" + cidStr, Log: x.cfg.Log, DiskMin: x.cfg.DiskMin, Base: cidStr}
	if key != cidStr {
		cfg.DeltaDir = filepath.Join(x.DeltaDir(layer), cidStr)
		switch cfg.Reserve = x.cfg.DiskReserve; {
		case cfg.Reserve == 0:
			cfg.Reserve = 16 << 20
		case cfg.Reserve < 0:
			cfg.Reserve = 0
		}
	}
	if id, err := cid.Decode(cidStr); err == nil && x.cfg.Fetch != nil {
		cfg.Fetch = layerFetcher{x.cfg.Fetch, id}
	}
	if f := x.cfg.OnReadError; f != nil {
		cfg.OnReadError = func(id cid.Cid, err error) { f(cidStr, id, err) }
	}
	if f := x.cfg.OnChunkRead; f != nil {
		cfg.OnChunk = func(id cid.Cid) { f(cidStr, id) }
	}
	v, err := fuseview.Mount(dir, m, cfg)
	if err != nil {
		return nil, err
	}
	s := &served{view: v, users: map[string]*Exposure{}}
	x.views[key] = s
	return s, nil
}

// releaseLocked drops layer's use of the view of cidStr, unmounting the
// view when nothing stands on it any more.
func (x *Exposer) releaseLocked(cidStr, layer string) {
	s, ok := x.views[cidStr]
	if !ok {
		return
	}
	delete(s.users, layer)
	if len(s.users) > 0 {
		return
	}
	delete(x.views, cidStr)
	if err := s.view.Unmount(); err != nil {
		x.cfg.Log.Warn("fuse view", "cid", cidStr, "err", err)
	}
	os.Remove(s.view.Dir())
}

// unmountFUSE takes the overlay and its writes off e.Path, then the view
// if no other layer stands on it. Unless discard, writes found once the
// overlay is unmounted are kept, and so is the view (ErrWrittenMeanwhile).
func (x *Exposer) unmountFUSE(e *Exposure, layer string, discard bool) error {
	if err := x.unmountOverlay(e, layer, discard); err != nil {
		return err
	}
	x.mu.Lock()
	if e.View != "" {
		x.releaseLocked(e.View, layer)
	}
	x.mu.Unlock()
	// The view's server has stopped (or its connection was aborted): no
	// write can reach the deltas any more, through whatever path a
	// process held the disk open by. Any written since the look above are
	// kept, and the view is mounted again with them (e.View kept).
	if !discard {
		if n, size := x.DiskChanges(e, layer); n > 0 {
			return fmt.Errorf("%s: %w: %d disk image(s), %d bytes, kept", e.Path, ErrWrittenMeanwhile, n, size)
		}
	}
	e.View = ""
	os.RemoveAll(x.DeltaDir(layer)) // the disks' writes go with the overlay's
	return nil
}

// liveLocked reports whether e's overlay stands on a view this process
// serves.
func (x *Exposer) liveLocked(e *Exposure) bool {
	s, ok := x.views[e.View]
	return ok && s.users != nil && Mounted(e.Path)
}

// Live reports whether an exposure recorded as exposed still shows the
// layer: false for a FUSE exposure whose view this process does not serve
// (the daemon restarted, or was killed) and for an overlay that is no
// longer mounted (a reboot). The reconciler exposes such a layer again.
func (x *Exposer) Live(e *Exposure) bool {
	switch {
	case e.View != "":
		x.mu.Lock()
		defer x.mu.Unlock()
		return x.liveLocked(e)
	case e.Mode.Overlaid():
		return Mounted(e.Path)
	}
	return true
}

// Recover clears what a killed daemon left: FUSE view mounts that no
// process serves any more (their overlays are mounted again when the
// reconciler finds them not Live). Call it before exposing anything.
func (x *Exposer) Recover() {
	for _, mp := range MountsUnder(filepath.Join(x.cfg.DataDir, fuseDir)) {
		x.mu.Lock()
		_, ours := x.views[filepath.Base(mp)]
		x.mu.Unlock()
		if ours {
			continue
		}
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil {
			x.cfg.Log.Warn("stale fuse view", "path", mp, "err", err)
			continue
		}
		x.cfg.Log.Info("stale fuse view unmounted", "path", mp)
		os.Remove(mp)
	}
}

// Close takes every FUSE exposure down (the overlays, keeping their
// writes, then the views), since the views die with this process. The
// records still say exposed, so the next start mounts them again.
func (x *Exposer) Close() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	var errs []error
	for cidStr, s := range x.views {
		for _, e := range s.users {
			for _, mp := range e.Maps { // binds into the overlay keep it (and the view) alive
				if mp.Bind {
					mp.Created = false // kept for the next start's Remap, which binds on it again
					x.unbindMap(mp)    // never through a symlink
				}
			}
			if err := unmountAt(e); err != nil {
				errs = append(errs, err)
			}
		}
		if err := s.view.Unmount(); err != nil {
			errs = append(errs, err)
		}
		os.Remove(s.view.Dir())
		delete(x.views, cidStr)
	}
	if len(errs) > 0 {
		return fmt.Errorf("unmount fuse views: %v", errs)
	}
	return nil
}

// DiskChanges counts the disk images of layer written since they were
// last committed, and the bytes their deltas hold: those kept on disk for
// every version exposed here (a version switch leaves the old deltas),
// except that the view this process serves is asked instead of its files.
func (x *Exposer) DiskChanges(e *Exposure, layer string) (files int, bytes int64) {
	if !e.Mode.Overlaid() {
		return 0, 0
	}
	x.mu.Lock()
	s, served := x.views[e.View]
	x.mu.Unlock()
	cur, _, disks := strings.Cut(e.View, "@")
	if served && disks {
		files, bytes = s.view.Changes()
	} else {
		cur = "" // read from disk like the others
	}
	ents, _ := os.ReadDir(x.DeltaDir(layer))
	for _, ent := range ents {
		if ent.IsDir() && ent.Name() != cur {
			n, b := fuseview.DeltaChanges(filepath.Join(x.DeltaDir(layer), ent.Name()))
			files, bytes = files+n, bytes+b
		}
	}
	return files, bytes
}

// Changed is what was written into an exposed layer, for a commit.
type Changed struct {
	CID   string // the manifest exposed
	Upper string // the overlay's upper directory ("" when none)
	// UpperDone records the upper directory's content, as it was when
	// Changed returned, committed (call it once the commit is published).
	UpperDone func() error
	// Disks makes the new entries of the disk images written since their
	// last commit (nil when there are none); done records them committed.
	Disks func(ctx context.Context, p chunk.Params, put fuseview.Put) (entries []chunk.Entry, done func() error, err error)
}

// Changed returns what was written into layer's exposure e (manifest
// cidStr). The disks' part needs the view served by this process.
func (x *Exposer) Changed(e *Exposure, layer, cidStr string) (Changed, error) {
	c := Changed{CID: cidStr}
	if !e.Mode.Overlaid() {
		return c, fmt.Errorf("%s is exposed %s: only overlaid exposures (fuse, overlay) record changes", layer, e.Mode)
	}
	c.Upper, c.UpperDone = x.UpperDir(layer), x.markCommitted(layer)
	if !strings.Contains(e.View, "@") {
		return c, nil
	}
	x.mu.Lock()
	s, ok := x.views[e.View]
	x.mu.Unlock()
	if !ok {
		return c, fmt.Errorf("the view of %s is not mounted now (the daemon is bringing it up): try again", layer)
	}
	c.Disks = s.view.CommitDisks
	return c, nil
}
