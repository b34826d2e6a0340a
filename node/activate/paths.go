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
// Even for an operator, a symlink owned by another user than root and the
// daemon's is not followed (refused): that user could point it anywhere,
// at any moment.
func (r *Reconciler) exposurePath(a gossip.Activation) (string, error) {
	signer, _ := peer.Decode(a.Signer)
	if r.cfg.Cluster != nil && r.cfg.Cluster.IsOperator(signer) {
		p, err := resolveTrusted(filepath.Join(r.cfg.Root, a.At))
		if err != nil {
			return "", fmt.Errorf("%w: %v", ErrPathRefused, err)
		}
		return p, nil
	}
	return filepath.Join(resolveExisting(r.cfg.Root), filepath.Clean("/"+a.At)), nil
}

// mapsFor is a's --map pairs as this host makes them. Maps never follow
// a symlink, so an operator's SRC is given with its symlinks resolved
// first (resolveTrusted: /etc/resolv.conf is often one), and must still
// lie under --root; other activations' are as given (one holding a
// symlink was refused: ownedHere).
func (r *Reconciler) mapsFor(a gossip.Activation) ([]string, error) {
	signer, _ := peer.Decode(a.Signer)
	if r.cfg.Cluster == nil || !r.cfg.Cluster.IsOperator(signer) || len(a.Maps) == 0 {
		return a.Maps, nil
	}
	root := resolveExisting(r.cfg.Root)
	out := make([]string, 0, len(a.Maps))
	for _, m := range a.Maps {
		src, dst, err := api.ParseMap(m)
		if err != nil {
			return nil, err
		}
		real, err := resolveTrusted(filepath.Join(r.cfg.Root, src))
		if err != nil {
			return nil, fmt.Errorf("%w: map %s: %v", ErrPathRefused, src, err)
		}
		rel, err := filepath.Rel(root, real)
		if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
			return nil, fmt.Errorf("%w: map %s leads to %s, outside this host's root %s", ErrPathRefused, src, real, root)
		}
		out = append(out, "/"+filepath.ToSlash(rel)+"="+dst)
	}
	return out, nil
}

// resolveTrusted is p with the symlinks of its existing part resolved,
// following only those owned by root or the daemon's user.
func resolveTrusted(p string) (string, error) {
	p = filepath.Clean("/" + p)
	for hops := 0; hops <= 40; hops++ {
		comps := strings.Split(strings.TrimPrefix(p, "/"), "/")
		cur, again := "/", false
		for i, c := range comps {
			if c == "" {
				continue
			}
			next := filepath.Join(cur, c)
			fi, err := os.Lstat(next)
			if errors.Is(err, fs.ErrNotExist) {
				return filepath.Join(append([]string{cur}, comps[i:]...)...), nil
			}
			if err != nil {
				return "", err
			}
			if fi.Mode()&fs.ModeSymlink == 0 {
				cur = next
				continue
			}
			if uid := fi.Sys().(*syscall.Stat_t).Uid; uid != 0 && int(uid) != os.Geteuid() {
				return "", fmt.Errorf("%s is a symlink of uid %d: not followed, whoever signed the activation", next, uid)
			}
			target, err := os.Readlink(next)
			if err != nil {
				return "", err
			}
			if !filepath.IsAbs(target) {
				target = filepath.Join(cur, target)
			}
			p, again = filepath.Join(append([]string{target}, comps[i+1:]...)...), true
			break
		}
		if !again {
			return cur, nil
		}
	}
	return "", fmt.Errorf("%s: too many symlinks", p)
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

// pathFree refuses to expose layer at path, or to map its --map sources,
// where another layer is exposed or mapped here, or above or below that:
// mounting over it would hide it (and undoing either would take the
// other's mounts away); and over the daemon's data directory, whose files
// the daemon opens by path (its key, its socket, its store).
func (r *Reconciler) pathFree(a gossip.Activation, path string) error {
	overlap := func(a, b string) bool {
		return a == b || strings.HasPrefix(a, b+"/") || strings.HasPrefix(b, a+"/") || b == "/" || a == "/"
	}
	mine := []string{path}
	for _, m := range a.Maps {
		if src, _, err := api.ParseMap(m); err == nil {
			mine = append(mine, filepath.Join(resolveExisting(r.cfg.Root), filepath.Clean("/"+src)))
		}
	}
	if data, err := filepath.Abs(r.cfg.Exposer.DataDir()); err == nil && r.cfg.Exposer.DataDir() != "" {
		data = resolveExisting(data)
		// Below the data directory only within --root, if that lies there
		// (a testnet's nodes do): the daemon's own files are elsewhere.
		rootTop := topBelow(data, resolveExisting(r.cfg.Root))
		for _, p := range mine {
			if overlap(p, data) && (rootTop == "" || topBelow(data, p) != rootTop) {
				return fmt.Errorf("%w: %s overlaps this host's data directory %s", ErrPathRefused, p, data)
			}
		}
	}
	for other, o := range r.local {
		if other == a.Layer || !o.Exposed || o.Path == "" {
			continue
		}
		theirs := []string{o.Path}
		for _, m := range o.Maps {
			theirs = append(theirs, m.Src)
		}
		for _, p := range mine {
			for _, q := range theirs {
				if overlap(p, q) {
					return fmt.Errorf("%w: %s overlaps %s, where %s is exposed or mapped here: deactivate it first, or choose another path", ErrPathRefused, p, q, other)
				}
			}
		}
	}
	// This activation's own maps must not land in one another, nor in its
	// own exposure (a map source there would hide part of the layer).
	for i := 1; i < len(mine); i++ {
		for j := 0; j < i; j++ {
			if overlap(mine[i], mine[j]) {
				return fmt.Errorf("%w: map source %s overlaps %s of the same activation", ErrPathRefused, mine[i], mine[j])
			}
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
