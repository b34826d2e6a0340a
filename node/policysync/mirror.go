package policysync

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/tree"
	"github.com/p2pimg/p2pimg/node/expose"
	"github.com/p2pimg/p2pimg/policy"
)

// Restore undoes drift in the exposed view x of layer (manifest cidStr)
// when its effective policy asks for it: in mirror mode any change, else
// changes under its locked paths. An overlay is mounted again without its
// upper directory; a materialized view gets a fresh copy (mirror) or just
// its locked paths back. It returns what it found and did, for the host's
// state ("" when nothing drifted or nothing is checked), and how many
// paths it restored. It runs on the reconciler goroutine.
func (sv *Service) Restore(ctx context.Context, layer, cidStr string, x *expose.Exposure) (detail string, restored int, err error) {
	eff, c, ok := sv.Effective(ctx, layer)
	if !ok || c != nil || (eff.Mode != policy.Mirror && len(eff.Locked) == 0) {
		return "", 0, nil
	}
	if x.Mode.Overlaid() && eff.Mode != policy.Mirror {
		return "", 0, nil // locked paths are read-only binds there
	}
	m, err := sv.flat(ctx, cidStr)
	if err != nil {
		return "", 0, nil // not here (yet): nothing to compare
	}
	var changes []tree.Change
	what, restore := "the exposed view drifted", func() error { return sv.cfg.Exposer.Expose(ctx, x, layer, cidStr, m, eff.Locked) }
	switch {
	case x.Mode.Overlaid():
		changes, err = tree.UpperChanges(m, sv.cfg.Exposer.UpperDir(layer))
	default:
		changes, err = tree.Diff(ctx, m, x.Path)
		if eff.Mode != policy.Mirror {
			changes = slices.DeleteFunc(changes, func(ch tree.Change) bool { return !isLocked("/"+ch.Path, eff.Locked) })
			what, restore = "locked paths were changed", func() error {
				if err := sv.restorePaths(ctx, x.Path, m, changes); err != nil {
					return err
				}
				// The restored paths are as checked out, newly: their
				// change times must not count as local writes.
				x.CheckedOut = time.Now().UnixNano()
				return nil
			}
		}
	}
	if err != nil || len(changes) == 0 {
		return "", 0, nil
	}
	var paths []string
	for _, ch := range changes {
		paths = append(paths, ch.Path)
	}
	sv.cfg.Log.Warn("policy: "+what+"; restoring the layer", "layer", layer, "paths", paths)
	detail = fmt.Sprintf("%s: %s; restored at %s", what, strings.Join(paths, ", "), time.Now().UTC().Format(time.TimeOnly))
	if err := restore(); err != nil {
		return detail, 0, fmt.Errorf("policy: restore %s: %w", layer, err)
	}
	return detail, len(changes), nil
}

// restorePaths puts back the changed paths of a materialized view, one by
// one: the layer's versions are checked out beside the view and renamed
// over the changed ones; paths the layer does not have are removed.
func (sv *Service) restorePaths(ctx context.Context, dir string, m *chunk.Manifest, changes []tree.Change) error {
	want := map[string]bool{}
	for _, ch := range changes {
		want[ch.Path] = true
		for d := path.Dir(ch.Path); d != "."; d = path.Dir(d) {
			want[d] = true
		}
	}
	sub := &chunk.Manifest{Params: m.Params}
	for _, e := range m.Entries {
		if want[e.Path] {
			sub.Entries = append(sub.Entries, e)
		}
	}
	tmp := dir + ".p2pimg-fix"
	os.RemoveAll(tmp)
	defer os.RemoveAll(tmp)
	if err := tree.Checkout(ctx, sv.cfg.Store, sub, tmp, tree.CheckoutOptions{Owners: os.Geteuid() == 0}); err != nil {
		return err
	}
	for _, ch := range changes {
		dst := filepath.Join(dir, filepath.FromSlash(ch.Path))
		if ch.Kind == "extra" {
			if err := os.RemoveAll(dst); err != nil {
				return err
			}
			continue
		}
		src := filepath.Join(tmp, filepath.FromSlash(ch.Path))
		if fi, err := os.Lstat(src); err == nil && fi.IsDir() {
			if err := os.Chmod(dst, fi.Mode().Perm()); err != nil { // a directory's mode
				return err
			}
			continue
		}
		os.RemoveAll(dst)
		if err := os.Rename(src, dst); err != nil {
			return err
		}
	}
	return nil
}

// isLocked reports whether p (absolute) is, or is under, a locked path.
func isLocked(p string, locked []string) bool {
	for _, l := range locked {
		if p == l || strings.HasPrefix(p, l+"/") {
			return true
		}
	}
	return false
}
