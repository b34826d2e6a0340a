package expose

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/tree"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/expose/fuseview"
)

// OverlayWorks mounts and unmounts a small overlay in a scratch directory
// under dir: the only sure way to know this host may mount overlays (root
// in a sandbox may still be refused).
func OverlayWorks(dir string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("not root")
	}
	tmp, err := os.MkdirTemp(dir, ".overlay-probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	for _, d := range []string{"lower", "upper", "work", "mnt"} {
		if err := os.Mkdir(filepath.Join(tmp, d), 0o700); err != nil {
			return err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", filepath.Join(tmp, "lower"), filepath.Join(tmp, "upper"), filepath.Join(tmp, "work"))
	if err := unix.Mount("overlay", filepath.Join(tmp, "mnt"), "overlay", 0, opts); err != nil {
		return err
	}
	return unix.Unmount(filepath.Join(tmp, "mnt"), unix.MNT_DETACH)
}

// Mode is the mode this host uses for new activations: the one
// configured, or for auto, fuse if a probe FUSE view and a probe overlay
// mount both work, else overlay if the overlay does (checked once).
func (x *Exposer) Mode() api.Mode {
	switch x.cfg.Mode {
	case api.ModeFUSE, api.ModeOverlay, api.ModeMaterialized:
		return x.cfg.Mode
	}
	x.probeOnce.Do(func() {
		x.autoMode = api.ModeMaterialized
		if err := OverlayWorks(x.cfg.DataDir); err != nil {
			x.cfg.Log.Info("activations use materialized directories: overlay mounts unavailable", "reason", err.Error())
			return
		}
		x.autoMode = api.ModeOverlay
		if err := fuseview.Works(x.cfg.DataDir); err != nil {
			x.cfg.Log.Info("activations use overlays on checkouts: FUSE unavailable", "reason", err.Error())
			return
		}
		x.autoMode = api.ModeFUSE
	})
	return x.autoMode
}

// Mounted reports whether path is a mount point.
func Mounted(path string) bool {
	for _, m := range MountsUnder(path) {
		if m == path {
			return true
		}
	}
	return false
}

// MountsUnder lists the mount points at or below dir, deepest first.
func MountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%3o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// view is the read-only checkout of a layer that overlays share.
func (x *Exposer) view(ctx context.Context, cidStr string, m *chunk.Manifest) (string, error) {
	x.viewMu.Lock()
	defer x.viewMu.Unlock()
	dir := filepath.Join(x.cfg.DataDir, viewsDir, cidStr)
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err == nil {
		return filepath.Join(dir, "tree"), nil
	}
	os.RemoveAll(dir)
	if err := tree.Checkout(ctx, x.cfg.Store, m, filepath.Join(dir, "tree"), tree.CheckoutOptions{Owners: os.Geteuid() == 0}); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, ".complete"), nil, 0o600); err != nil {
		return "", err
	}
	return filepath.Join(dir, "tree"), nil
}

// mountOverlay mounts the layer's view over e.Path, with what is at the
// path as the lowest layer and a writable upper directory in the data dir.
func (x *Exposer) mountOverlay(ctx context.Context, e *Exposure, layer, cidStr string, m *chunk.Manifest, locked []string) error {
	lower, err := x.view(ctx, cidStr, m)
	if err != nil {
		return err
	}
	// The same version mounted again after its overlay was lost (a
	// reboot) keeps what was written into it.
	keep := e.Exposed && !Mounted(e.Path) && e.Lower == cidStr
	err = x.overlayOn(e, layer, lower, locked, keep, nil)
	if Mounted(e.Path) {
		e.Lower = cidStr // even when locking a path failed after the mount
	}
	return err
}

// overlayOn mounts an overlay of lower over e.Path. A previous overlay
// there is taken away first; keepUpper keeps its writes (the same layer
// version mounted again, e.g. after a restart), else they are dropped.
// disks (paths in lower) are bound from lower over the overlay, writable.
func (x *Exposer) overlayOn(e *Exposure, layer, lower string, locked []string, keepUpper bool, disks []string) error {
	// a previous version, or a mount whose lower died
	if err := unmountAt(e); err != nil {
		return err
	}
	if _, err := os.Lstat(e.Path); os.IsNotExist(err) {
		if err := os.MkdirAll(e.Path, 0o755); err != nil {
			return err
		}
		e.Created = true
	}
	work := filepath.Dir(x.UpperDir(layer))
	if keepUpper {
		os.RemoveAll(filepath.Join(work, "work")) // overlayfs wants an empty one
	} else {
		os.RemoveAll(work)
	}
	for _, d := range []string{"upper", "work"} {
		if err := os.MkdirAll(filepath.Join(work, d), 0o755); err != nil {
			return err
		}
	}
	// The path is opened without following a symlink, and the overlay
	// mounted on what was opened, with it as its lower layer too: a path
	// swapped for a symlink after it was checked (by whoever may write in
	// its parent) cannot move the mount elsewhere, and no character of the
	// path (',' say) is read as an option.
	dir, err := unix.Openat2(unix.AT_FDCWD, e.Path, &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_SYMLINKS})
	if err != nil {
		return fmt.Errorf("open %s without following symlinks: %w", e.Path, err)
	}
	defer unix.Close(dir)
	at := fmt.Sprintf("/proc/self/fd/%d", dir)
	opts := fmt.Sprintf("lowerdir=%s:%s,upperdir=%s,workdir=%s", lower, at, filepath.Join(work, "upper"), filepath.Join(work, "work"))
	if err := unix.Mount("overlay", at, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount overlay at %s: %w", e.Path, err)
	}
	e.Exposed = true
	if err := bindDisks(e, lower, disks); err != nil {
		unmountAt(e) // not left half made
		return err
	}
	if err := lockPaths(e, locked); err != nil { // after the disks: a locked disk image is bound read-only over its bind
		unmountAt(e)
		return err
	}
	return nil
}

// bindDisks binds the disk images (paths in lower) over the overlay at
// e.Path, writable. The overlay must be what e.Path leads to, without a
// symlink on the way.
func bindDisks(e *Exposure, lower string, disks []string) error {
	if len(disks) == 0 {
		return nil
	}
	top, err := unix.Openat2(unix.AT_FDCWD, e.Path, &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_SYMLINKS})
	if err != nil {
		return fmt.Errorf("open %s without following symlinks: %w", e.Path, err)
	}
	defer unix.Close(top)
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(top, &sfs); err != nil || sfs.Type != unix.OVERLAYFS_SUPER_MAGIC {
		return fmt.Errorf("%s is no longer the overlay just mounted there", e.Path)
	}
	for _, d := range disks {
		p := filepath.Join(e.Path, filepath.FromSlash(d))
		if err := unix.Mount(filepath.Join(lower, filepath.FromSlash(d)), p, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind disk image %s: %w", d, err)
		}
		e.Disks = append(e.Disks, p)
	}
	return nil
}

// lockPaths makes the paths the layer policy locks read-only in the
// overlay (a read-only bind of each onto itself): writes there fail with
// EROFS.
func lockPaths(e *Exposure, locked []string) error {
	for _, l := range locked {
		p := filepath.Join(e.Path, filepath.FromSlash(l))
		if fi, err := os.Lstat(p); err != nil || fi.Mode()&os.ModeSymlink != 0 {
			continue // not in the layer, or a symlink that could lead elsewhere
		}
		if err := unix.Mount(p, p, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("lock %s: %w", l, err)
		}
		e.Locked = append(e.Locked, p)
		if err := unix.Mount("", p, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("lock %s read-only: %w", l, err)
		}
	}
	return nil
}

// UpperDir is where an overlay keeps the writes made to a layer's view.
func (x *Exposer) UpperDir(layer string) string {
	return filepath.Join(x.cfg.DataDir, overlayDir, strings.ReplaceAll(layer, "/", "_"), "upper")
}

// unmountOverlay removes the overlay and its writes; the path shows its
// old contents again. Unless discard, writes found once it is unmounted
// are kept (ErrWrittenMeanwhile).
func (x *Exposer) unmountOverlay(e *Exposure, layer string, discard bool) error {
	if err := unmountAt(e); err != nil {
		return err
	}
	if !discard {
		if n, size := x.Changes(e, layer); n > 0 {
			return fmt.Errorf("%s: %w: %d path(s), %d bytes, kept", e.Path, ErrWrittenMeanwhile, n, size)
		}
	}
	os.RemoveAll(filepath.Dir(x.UpperDir(layer)))
	e.Lower = ""
	if e.Created {
		os.Remove(e.Path) // only if still empty: it was made for the mount
		e.Created = false
	}
	return nil
}

// unmountAt takes the locked binds and the overlay off e.Path, never
// through a symlink (one swapped in would lead elsewhere).
func unmountAt(e *Exposure) error {
	for i := len(e.Locked) - 1; i >= 0; i-- {
		if err := unix.Unmount(e.Locked[i], unix.UMOUNT_NOFOLLOW); err != nil {
			unix.Unmount(e.Locked[i], unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
		}
	}
	e.Locked = nil
	for i := len(e.Disks) - 1; i >= 0; i-- {
		if err := unix.Unmount(e.Disks[i], unix.UMOUNT_NOFOLLOW); err != nil {
			unix.Unmount(e.Disks[i], unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
		}
	}
	e.Disks = nil
	if Mounted(e.Path) {
		if err := unix.Unmount(e.Path, unix.UMOUNT_NOFOLLOW); err != nil {
			if err := unix.Unmount(e.Path, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil {
				return fmt.Errorf("unmount %s: %w", e.Path, err)
			}
		}
	}
	return nil
}

// Changes counts what was written into an overlaid view and not
// committed: the entries of its upper directory (whiteouts included)
// unless it is as it was at its last commit, and the disk images written
// since their last commit; and their bytes (a disk's: its delta's). For a
// materialised view: the paths that differ from the checkout
// (checkoutChanges). 0 when nothing was written.
func (x *Exposer) Changes(e *Exposure, layer string) (paths int, bytes int64) {
	if e.Mode == api.ModeMaterialized && e.Exposed {
		return x.checkoutChanges(e)
	}
	if !e.Mode.Overlaid() {
		return 0, 0
	}
	paths, bytes = x.DiskChanges(e, layer)
	committed := x.committedMark(layer)
	if w := walkUpper(x.UpperDir(layer), committed != ""); w.paths > 0 && (committed == "" || w.mark != committed) {
		paths, bytes = paths+w.paths, bytes+w.bytes
	}
	return paths, bytes
}

// UpperWritten reports whether layer's overlay upper directory holds
// anything, committed or not: mounting the layer afresh would drop it.
func (x *Exposer) UpperWritten(layer string) bool {
	n, _ := dirEntries(x.UpperDir(layer))
	return n > 0
}

// upperWalk is what an upper directory holds, from one walk: its
// entries and their bytes; when marked, also a mark of them all (path,
// mode, size, times, inode), which any write, removal, rename or change of
// attributes since changes, and the latest change time of any entry.
type upperWalk struct {
	paths  int
	bytes  int64
	mark   string
	newest time.Time
}

func walkUpper(upper string, marked bool) (w upperWalk) {
	h := sha256.New()
	filepath.WalkDir(upper, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == upper {
			return nil
		}
		w.paths++
		if !marked && !d.Type().IsRegular() {
			return nil // only a file's size is wanted
		}
		fi, err := d.Info()
		if err != nil {
			fmt.Fprintf(h, "%q ?\n", p[len(upper):])
			return nil
		}
		if fi.Mode().IsRegular() {
			w.bytes += fi.Size()
		}
		if !marked {
			return nil
		}
		fmt.Fprintf(h, "%q %o %d", p[len(upper):], fi.Mode(), fi.Size())
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			fmt.Fprintf(h, " %d.%d %d.%d %d", st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec, st.Ino)
			if t := time.Unix(st.Ctim.Sec, st.Ctim.Nsec); t.After(w.newest) {
				w.newest = t
			}
		}
		h.Write([]byte{'\n'})
		return nil
	})
	if marked {
		w.mark = hex.EncodeToString(h.Sum(nil))
	}
	return w
}

// committedMark is the upper directory's mark when its content was last
// committed ("" if never since it was made).
func (x *Exposer) committedMark(layer string) string {
	b, _ := os.ReadFile(x.markFile(layer))
	return string(b)
}

// markFile keeps committedMark, beside the upper directory: it goes when
// the upper directory is dropped.
func (x *Exposer) markFile(layer string) string {
	return filepath.Join(filepath.Dir(x.UpperDir(layer)), "committed")
}

// markCommitted returns what records the upper directory's content as it
// is now committed: call it once the commit that read it is published.
// The mark is taken now, before the commit reads the directory, and taken
// again when it is recorded; a write made in between changes one of the
// entries' times and the two marks differ, so nothing is recorded and the
// changes still count. Two writes a mark cannot tell apart are guarded
// against: the file system is synced first, so that a later write through
// a shared mapping faults and updates the file's times, and a mark whose
// newest change is within a coarse clock tick of the walk is not recorded
// (a write in the same tick could leave the times as they were).
func (x *Exposer) markCommitted(layer string) func() error {
	upper := x.UpperDir(layer)
	if fd, err := unix.Open(upper, unix.O_RDONLY|unix.O_DIRECTORY, 0); err == nil {
		unix.Syncfs(fd)
		unix.Close(fd)
	}
	start := time.Now()
	first := walkUpper(upper, true)
	return func() error {
		again := walkUpper(upper, true)
		if first.paths == 0 || again.mark != first.mark || again.newest.After(start.Add(-racyTick)) {
			return nil // nothing, or written while the commit read it, or too close to tell
		}
		tmp := x.markFile(layer) + ".new"
		if err := os.WriteFile(tmp, []byte(again.mark), 0o600); err != nil {
			return fmt.Errorf("record the committed files: %w", err)
		}
		if err := os.Rename(tmp, x.markFile(layer)); err != nil {
			return fmt.Errorf("record the committed files: %w", err)
		}
		return nil
	}
}

// racyTick bounds the coarse clock a file system stamps times with: a
// change this close to a mark's walk might be followed by one that leaves
// the same times.
var racyTick = 20 * time.Millisecond

func dirEntries(dir string) (int, error) {
	ents, err := os.ReadDir(dir)
	return len(ents), err
}

// viewsDir holds the overlay mode's read-only checkouts, one per
// manifest; overlayDir the overlays' upper and work directories, one per
// layer.
const (
	viewsDir   = "views"
	overlayDir = "overlay"
)

// Disk is the disk (allocated blocks) an exposer keeps in the data dir
// beside the store.
type Disk struct {
	Views  int64 // overlay-mode view checkouts
	Deltas int64 // disk images' block-level copy-on-write deltas
	Uppers int64 // overlays' upper directories (what was written into trees)
}

// Disk measures what the exposer keeps in the data dir now.
func (x *Exposer) Disk() Disk {
	return Disk{
		Views:  dirBlocks(filepath.Join(x.cfg.DataDir, viewsDir)),
		Deltas: dirBlocks(filepath.Join(x.cfg.DataDir, deltaDir)),
		Uppers: dirBlocks(filepath.Join(x.cfg.DataDir, overlayDir)),
	}
}

// PruneViews removes the view checkouts of every manifest not in keep,
// and returns how many and the disk they used.
func (x *Exposer) PruneViews(keep map[string]bool) (removed int, bytes int64, err error) {
	x.viewMu.Lock()
	defer x.viewMu.Unlock()
	dir := filepath.Join(x.cfg.DataDir, viewsDir)
	ents, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("prune views: %w", err)
	}
	for _, ent := range ents {
		if keep[ent.Name()] {
			continue
		}
		p := filepath.Join(dir, ent.Name())
		if Mounted(filepath.Join(p, "tree")) {
			continue // in use by a mount we do not know of: leave it
		}
		size := dirBlocks(p)
		if err := os.RemoveAll(p); err != nil {
			return removed, bytes, fmt.Errorf("prune views: %w", err)
		}
		removed++
		bytes += size
	}
	return removed, bytes, nil
}

func dirBlocks(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil {
			if fi, err := d.Info(); err == nil {
				if st, ok := fi.Sys().(*syscall.Stat_t); ok {
					n += st.Blocks * 512
				}
			}
		}
		return nil
	})
	return n
}
