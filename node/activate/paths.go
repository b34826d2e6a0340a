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
