package activate

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/gossip"
)

// ErrPathRefused: an activation would put a layer or a map where this host
// does not allow it.
var ErrPathRefused = errors.New("path refused")

// pathsAllowed refuses an activation that would reach where this host
// does not let it: --at and every --map source must lie under one of the
// host's allowed paths (anywhere under --root when none are set), and an
// activation that no operator signed (this host's own, `--hosts self`)
// never touches a path owned by a user other than root and the daemon's,
// nor goes through a symlink to get there.
func (r *Reconciler) pathsAllowed(a gossip.Activation) error {
	if a.Op.Deactivates() {
		return nil // undoing touches only what the activation made
	}
	paths := []string{a.At}
	for _, m := range a.Maps {
		src, _, err := api.ParseMap(m)
		if err != nil {
			return err
		}
		paths = append(paths, src)
	}
	signer, _ := peer.Decode(a.Signer)
	operator := r.cfg.Cluster != nil && r.cfg.Cluster.IsOperator(signer)
	for _, p := range paths {
		p = filepath.Clean("/" + p)
		if !under(p, r.cfg.AllowedPaths) {
			return fmt.Errorf("%w: %s is outside this host's allowed paths (%s); ask its administrator to add it to allowed_paths", ErrPathRefused, p, strings.Join(r.cfg.AllowedPaths, ", "))
		}
		if !operator {
			if err := r.ownedHere(p); err != nil {
				return err
			}
		}
	}
	return nil
}

// exposurePath is where activation a shows its layer here: --at under
// --root. An exposure is mounted without following a symlink (a path
// swapped for one after it was checked must not move the mount
// elsewhere), so symlinks in --root, and in an --at an operator signed,
// are resolved here; any other --at holding one is refused (ownedHere).
func (r *Reconciler) exposurePath(a gossip.Activation) string {
	signer, _ := peer.Decode(a.Signer)
	if r.cfg.Cluster != nil && r.cfg.Cluster.IsOperator(signer) {
		return resolveExisting(filepath.Join(r.cfg.Root, a.At))
	}
	return filepath.Join(resolveExisting(r.cfg.Root), filepath.Clean("/"+a.At))
}

// resolveExisting is p with the symlinks of its longest existing part
// resolved.
func resolveExisting(p string) string {
	p = filepath.Clean(p)
	rest := ""
	for q := p; ; q = filepath.Dir(q) {
		if real, err := filepath.EvalSymlinks(q); err == nil {
			return filepath.Join(real, rest)
		}
		if q == filepath.Dir(q) {
			return p
		}
		rest = filepath.Join(filepath.Base(q), rest)
	}
}

// pathFree refuses to expose layer at path where another layer is exposed
// here, or above or below one: mounting over it would hide it (and
// deactivating either would then take the other's mounts away), and the
// daemon's data directory, whose files the daemon opens by path.
func (r *Reconciler) pathFree(layer, path string) error {
	overlap := func(a, b string) bool {
		return a == b || strings.HasPrefix(a, b+"/") || strings.HasPrefix(b, a+"/") || b == "/" || a == "/"
	}
	if data, err := filepath.Abs(r.cfg.Exposer.DataDir()); err == nil && r.cfg.Exposer.DataDir() != "" {
		data = resolveExisting(data)
		// Below the data directory only within --root, if that lies there
		// (a testnet's nodes do): the daemon's own files are elsewhere.
		rootTop := topBelow(data, resolveExisting(r.cfg.Root))
		if overlap(path, data) && (rootTop == "" || topBelow(data, path) != rootTop) {
			return fmt.Errorf("%w: %s overlaps this host's data directory %s", ErrPathRefused, path, data)
		}
	}
	for other, o := range r.local {
		if other != layer && o.Exposed && o.Path != "" && overlap(path, o.Path) {
			return fmt.Errorf("%w: %s overlaps %s, where %s is exposed here: deactivate it first, or choose another path", ErrPathRefused, path, o.Path, other)
		}
	}
	return nil
}

// topBelow is the first component of p below dir ("" when p is not below
// dir).
func topBelow(dir, p string) string {
	rel, err := filepath.Rel(dir, p)
	if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
		return ""
	}
	top, _, _ := strings.Cut(rel, "/")
	return top
}

// under reports whether p is one of the prefixes or below one; no
// prefixes allows everything.
func under(p string, prefixes []string) bool {
	if len(prefixes) == 0 {
		return true
	}
	for _, q := range prefixes {
		q = filepath.Clean("/" + q)
		if q == "/" || p == q || strings.HasPrefix(p, q+"/") {
			return true
		}
	}
	return false
}

// ownedHere walks p (under --root) component by component and refuses a
// symlink on the way or anything owned by a user other than root and the
// daemon's; the walk stops at the first component that does not exist yet.
func (r *Reconciler) ownedHere(p string) error {
	cur := r.cfg.Root
	for _, c := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
		if c == "" {
			continue
		}
		cur = filepath.Join(cur, c)
		fi, err := os.Lstat(cur)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrPathRefused, cur, err)
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("%w: %s is a symlink; an activation without an operator key does not follow one (give the real path, or sign with an operator key)", ErrPathRefused, cur)
		}
		if uid := fi.Sys().(*syscall.Stat_t).Uid; uid != 0 && int(uid) != os.Geteuid() {
			return fmt.Errorf("%w: %s belongs to uid %d; an activation without an operator key never touches another user's path", ErrPathRefused, cur, uid)
		}
	}
	return nil
}
