package expose

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ipfs/go-cid"
	"golang.org/x/sys/unix"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/expose/fuseview"
)

// fuseDir holds the mount points of the FUSE views, one per manifest.
const fuseDir = "fuse"

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
func (x *Exposer) mountFUSE(e *Exposure, layer, cidStr string, m *chunk.Manifest, locked []string) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	keep := e.View == cidStr && !x.liveLocked(e)
	s, err := x.serveLocked(cidStr, m)
	if err != nil {
		return fmt.Errorf("expose %s: %w", layer, err)
	}
	s.users[layer] = e
	old := e.View
	e.View = cidStr
	err = x.overlayOn(e, layer, s.view.Dir(), locked, keep)
	if old != "" && old != cidStr {
		// A previous version's view, released only now that the overlay
		// above it is gone: a view still under an overlay cannot end.
		x.releaseLocked(old, layer)
	}
	if err != nil {
		return fmt.Errorf("expose %s: %w", layer, err)
	}
	return nil
}

// serveLocked returns the view of cidStr, mounting it if this process
// does not serve it yet (clearing a dead mount a killed daemon left).
func (x *Exposer) serveLocked(cidStr string, m *chunk.Manifest) (*served, error) {
	if s, ok := x.views[cidStr]; ok {
		return s, nil
	}
	dir := x.fuseViewDir(cidStr)
	if Mounted(dir) {
		unix.Unmount(dir, unix.MNT_DETACH)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	cfg := fuseview.Config{Store: x.cfg.Store, Name: "p2pimg:" + cidStr, Log: x.cfg.Log}
	if id, err := cid.Decode(cidStr); err == nil && x.cfg.Fetch != nil {
		cfg.Fetch = layerFetcher{x.cfg.Fetch, id}
	}
	if f := x.cfg.OnReadError; f != nil {
		cfg.OnReadError = func(id cid.Cid, err error) { f(cidStr, id, err) }
	}
	v, err := fuseview.Mount(dir, m, cfg)
	if err != nil {
		return nil, err
	}
	s := &served{view: v, users: map[string]*Exposure{}}
	x.views[cidStr] = s
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
// if no other layer stands on it.
func (x *Exposer) unmountFUSE(e *Exposure, layer string) error {
	if err := x.unmountOverlay(e, layer); err != nil {
		return err
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if e.View != "" {
		x.releaseLocked(e.View, layer)
	}
	e.View = ""
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
				if mp.Bind && Mounted(mp.Src) {
					unix.Unmount(mp.Src, unix.MNT_DETACH)
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
