package expose

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/p2pimg/p2pimg/node/api"
)

// Mapped is one original path redirected into an active layer.
type Mapped struct {
	Src     string `json:"src"`     // full path under --root
	Dst     string `json:"dst"`     // full path inside the exposed layer
	Bind    bool   `json:"bind"`    // a bind mount (overlay mode); else a symlink
	Saved   bool   `json:"saved"`   // symlink: the original is at Src + origSuffix
	Created bool   `json:"created"` // bind: Src was made to mount on
}

const origSuffix = ".p2pimg-orig"

// Maps work on paths that others may write near: an unprivileged user who
// can write in a parent of SRC (a sticky /tmp, say) can swap a component
// for a symlink between any check and any use. So nothing here resolves
// SRC by path: it is opened one component at a time from "/" without
// following a symlink, and every directory, file, symlink, mount and
// unmount is made relative to, or on, what was opened. A symlink anywhere
// in SRC (its last component too, for a bind) makes the map fail.

// MapAll redirects each SRC=DST of an activation into the exposed layer:
// a bind mount where the layer is an overlay (the host allows mounts),
// otherwise a symlink with the original moved aside. Each step is recorded
// before the next, so deactivation (or a retry) undoes exactly what was done.
func (x *Exposer) MapAll(e *Exposure, maps []string, save func() error) error {
	for _, m := range maps {
		src, dst, err := api.ParseMap(m)
		if err != nil {
			return err
		}
		mp := Mapped{Src: filepath.Join(x.cfg.Root, src), Dst: filepath.Join(e.Path, dst), Bind: e.Mode.Overlaid()}
		// DST must stay inside the layer even through symlinks the layer holds.
		real, err := filepath.EvalSymlinks(mp.Dst)
		if err != nil {
			return fmt.Errorf("map %s: %s is not in the layer: %w", m, dst, err)
		}
		top, err := filepath.EvalSymlinks(e.Path)
		if err != nil {
			return err
		}
		if real != top && !strings.HasPrefix(real, top+"/") {
			return fmt.Errorf("map %s: %s leads outside the layer (to %s)", m, dst, real)
		}
		if mp.Bind {
			err = bindMap(e, &mp)
		} else {
			err = symlinkMap(&mp)
		}
		if err != nil {
			return fmt.Errorf("map %s: %w", m, err)
		}
		e.Maps = append(e.Maps, mp)
		if err := save(); err != nil {
			return err
		}
	}
	return nil
}

// bindMap binds mp.Dst over mp.Src, first making an empty file or
// directory like mp.Dst at mp.Src (and its missing parents) if there is
// nothing there; what it made is removed again if the mount fails.
func bindMap(e *Exposure, mp *Mapped) error {
	from, err := openInLayer(e, mp.Dst)
	if err != nil {
		return err
	}
	defer unix.Close(from)
	var st unix.Stat_t
	if err := unix.Fstat(from, &st); err != nil {
		return err
	}
	dir, err := openDir(filepath.Dir(mp.Src), true)
	if err != nil {
		return err
	}
	defer dir.close()
	name := filepath.Base(mp.Src)
	var made *unix.Stat_t // what was made to mount on
	if _, err := lstatAt(dir.fd(), name); errors.Is(err, unix.ENOENT) {
		if made, err = mountPoint(dir.fd(), name, st.Mode&unix.S_IFMT == unix.S_IFDIR); err != nil {
			dir.undo()
			return fmt.Errorf("make %s to mount on: %w", mp.Src, err)
		}
	}
	undo := func() {
		if made != nil {
			removeMade(dir.fd(), name, made)
		}
		dir.undo()
	}
	to, err := openAt(dir.fd(), name, unix.O_PATH)
	if err != nil {
		undo()
		return fmt.Errorf("bind %s: %w", mp.Src, noFollow(mp.Src, err))
	}
	defer unix.Close(to)
	if err := unix.Mount(fdPath(from), fdPath(to), "", unix.MS_BIND, ""); err != nil {
		undo()
		return fmt.Errorf("bind %s: %w", mp.Src, err)
	}
	mp.Created = made != nil
	return nil
}

// symlinkMap puts a symlink to mp.Dst at mp.Src (making its missing
// parents), with what was there moved aside to mp.Src + origSuffix.
func symlinkMap(mp *Mapped) error {
	dir, err := openDir(filepath.Dir(mp.Src), true)
	if err != nil {
		return err
	}
	defer dir.close()
	name := filepath.Base(mp.Src)
	if _, err := lstatAt(dir.fd(), name); err == nil {
		if err := unix.Renameat(dir.fd(), name, dir.fd(), name+origSuffix); err != nil {
			return &os.LinkError{Op: "rename", Old: mp.Src, New: mp.Src + origSuffix, Err: err}
		}
		mp.Saved = true
	}
	if err := unix.Symlinkat(mp.Dst, dir.fd(), name); err != nil {
		if mp.Saved {
			unix.Renameat(dir.fd(), name+origSuffix, dir.fd(), name)
			mp.Saved = false
		}
		dir.undo()
		return &os.LinkError{Op: "symlink", Old: mp.Dst, New: mp.Src, Err: err}
	}
	return nil
}

// mountPoint makes an empty directory (dir) or file called name in the
// directory at, to mount on, and returns what it made. It fails if
// anything is there already, a symlink included.
func mountPoint(at int, name string, dir bool) (*unix.Stat_t, error) {
	if dir {
		if err := unix.Mkdirat(at, name, 0o755); err != nil {
			return nil, err
		}
	} else {
		fd, err := unix.Openat(at, name, unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
		if err != nil {
			return nil, err
		}
		unix.Close(fd)
	}
	return lstatAt(at, name)
}

// removeMade removes name from the directory at if it is still what
// mountPoint made there (and, for a directory, empty): whatever replaced
// it is not ours to remove.
func removeMade(at int, name string, made *unix.Stat_t) {
	st, err := lstatAt(at, name)
	if err != nil || st.Dev != made.Dev || st.Ino != made.Ino {
		return
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		unix.Unlinkat(at, name, unix.AT_REMOVEDIR)
	} else {
		unix.Unlinkat(at, name, 0)
	}
}

// UnmapAll restores every redirected path, last first. A map whose path
// no longer opens without a symlink on the way is left as it is, with a
// warning: undoing it through the symlink would unmount, remove or
// overwrite something else.
func (x *Exposer) UnmapAll(e *Exposure, save func() error) error {
	for len(e.Maps) > 0 {
		mp := e.Maps[len(e.Maps)-1]
		var err error
		if mp.Bind {
			err = x.unbindMap(mp)
		} else {
			err = x.unlinkMap(mp)
		}
		if err != nil {
			return fmt.Errorf("unmap %s: %w", mp.Src, err)
		}
		e.Maps = e.Maps[:len(e.Maps)-1]
		if err := save(); err != nil {
			return err
		}
	}
	return nil
}

// unbindMap takes the bind off mp.Src, and removes the file or directory
// made to mount on.
func (x *Exposer) unbindMap(mp Mapped) error {
	dir, err := openDir(filepath.Dir(mp.Src), false)
	if errors.Is(err, unix.ENOENT) {
		return nil // nothing there to unmount or remove
	}
	if err != nil {
		x.warnLeft(mp, err)
		return nil
	}
	defer dir.close()
	name := filepath.Base(mp.Src)
	if Mounted(mp.Src) {
		fd, err := openAt(dir.fd(), name, unix.O_PATH)
		if err != nil {
			x.warnLeft(mp, err)
			return nil
		}
		// The unmount follows only the link to what was just opened
		// (UMOUNT_NOFOLLOW would not even follow that), so it takes off
		// the mount at mp.Src reached without a symlink, and nothing else.
		err = unix.Unmount(fdPath(fd), unix.MNT_DETACH)
		unix.Close(fd)
		if err != nil {
			return err
		}
	}
	if mp.Created {
		// Only if still empty: it was made to mount on.
		if unix.Unlinkat(dir.fd(), name, 0) != nil {
			unix.Unlinkat(dir.fd(), name, unix.AT_REMOVEDIR)
		}
	}
	return nil
}

// unlinkMap removes the symlink at mp.Src and puts back what it replaced.
func (x *Exposer) unlinkMap(mp Mapped) error {
	dir, err := openDir(filepath.Dir(mp.Src), false)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		x.warnLeft(mp, err)
		return nil
	}
	defer dir.close()
	name := filepath.Base(mp.Src)
	if st, err := lstatAt(dir.fd(), name); err == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
		if err := unix.Unlinkat(dir.fd(), name, 0); err != nil {
			return err
		}
	}
	if mp.Saved {
		if err := unix.Renameat(dir.fd(), name+origSuffix, dir.fd(), name); err != nil {
			return fmt.Errorf("restore the original: %w", &os.LinkError{Op: "rename", Old: mp.Src + origSuffix, New: mp.Src, Err: err})
		}
	}
	return nil
}

// warnLeft says that a map was not undone, and why.
func (x *Exposer) warnLeft(mp Mapped, err error) {
	if x.cfg.Log != nil {
		x.cfg.Log.Warn("map left in place: its path cannot be opened without following a symlink", "src", mp.Src, "dst", mp.Dst, "err", noFollow(mp.Src, err).Error())
	}
}

// Remap makes again the bind mounts of e's maps that are gone (taken down
// with a FUSE exposure when the daemon stopped); symlinks stay in place.
func (x *Exposer) Remap(e *Exposure) error {
	for _, mp := range e.Maps {
		if !mp.Bind || Mounted(mp.Src) {
			continue
		}
		if err := rebind(e, mp); err != nil {
			return fmt.Errorf("map %s again: bind %s: %w", mp.Src, mp.Dst, err)
		}
	}
	return nil
}

// rebind binds mp.Dst over mp.Src again; both must still be there.
func rebind(e *Exposure, mp Mapped) error {
	from, err := openInLayer(e, mp.Dst)
	if err != nil {
		return err
	}
	defer unix.Close(from)
	dir, err := openDir(filepath.Dir(mp.Src), false)
	if err != nil {
		return err
	}
	defer dir.close()
	to, err := openAt(dir.fd(), filepath.Base(mp.Src), unix.O_PATH)
	if err != nil {
		return noFollow(mp.Src, err)
	}
	defer unix.Close(to)
	return unix.Mount(fdPath(from), fdPath(to), "", unix.MS_BIND, "")
}

// openInLayer opens dst, a path in e's exposure, as an O_PATH descriptor:
// e.Path without following a symlink, then dst beneath it, following the
// layer's own symlinks only while they stay in the layer (what is opened is
// what gets bound, whatever the path leads to by then).
func openInLayer(e *Exposure, dst string) (int, error) {
	rel, err := filepath.Rel(e.Path, dst)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return -1, fmt.Errorf("%s is not in the layer at %s", dst, e.Path)
	}
	top, err := unix.Openat2(unix.AT_FDCWD, e.Path, &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_SYMLINKS})
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", e.Path, noFollow(e.Path, err))
	}
	defer unix.Close(top)
	fd, err := unix.Openat2(top, rel, &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS})
	if errors.Is(err, unix.EXDEV) {
		return -1, fmt.Errorf("%s leads outside the layer", rel)
	}
	if err != nil {
		return -1, fmt.Errorf("%s is not in the layer: %w", rel, err)
	}
	return fd, nil
}

// walked is a directory opened one component at a time from "/", never
// through a symlink, with the directories on the way kept open so that
// those it made can be removed again.
type walked struct {
	fds   []int    // "/" first; fds[i+1] is names[i] in fds[i]
	names []string // the components
	made  []bool   // made[i]: names[i] was made by openDir
}

// openDir opens the absolute, clean path dir. A symlink as any of its
// components fails with ELOOP; with create, missing directories are made
// (0755), else a missing one fails with ENOENT.
func openDir(dir string, create bool) (*walked, error) {
	root, err := unix.Openat2(unix.AT_FDCWD, "/", &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_SYMLINKS})
	if err != nil {
		return nil, err
	}
	w := &walked{fds: []int{root}}
	for _, name := range strings.Split(strings.TrimPrefix(dir, "/"), "/") {
		if name == "" {
			continue
		}
		made := false
		fd, err := openAt(w.fd(), name, unix.O_PATH|unix.O_DIRECTORY)
		if errors.Is(err, unix.ENOENT) && create {
			if err = unix.Mkdirat(w.fd(), name, 0o755); err == nil {
				made = true
			}
			if err == nil || errors.Is(err, unix.EEXIST) { // EEXIST: made meanwhile, by someone else
				fd, err = openAt(w.fd(), name, unix.O_PATH|unix.O_DIRECTORY)
			}
		}
		if err != nil {
			if made {
				unix.Unlinkat(w.fd(), name, unix.AT_REMOVEDIR)
			}
			w.undo()
			w.close()
			p := filepath.Join(append([]string{"/"}, append(w.names, name)...)...)
			if errors.Is(err, unix.ELOOP) {
				return nil, noFollow(p, err)
			}
			return nil, &os.PathError{Op: "open", Path: p, Err: err}
		}
		w.fds, w.names, w.made = append(w.fds, fd), append(w.names, name), append(w.made, made)
	}
	return w, nil
}

// fd is the directory opened.
func (w *walked) fd() int { return w.fds[len(w.fds)-1] }

// undo removes the directories openDir made, deepest first, each only if
// still empty.
func (w *walked) undo() {
	for i := len(w.names) - 1; i >= 0; i-- {
		if w.made[i] {
			unix.Unlinkat(w.fds[i], w.names[i], unix.AT_REMOVEDIR)
			w.made[i] = false
		}
	}
}

func (w *walked) close() {
	for _, fd := range w.fds {
		unix.Close(fd)
	}
	w.fds = w.fds[:0]
}

// openAt opens name, one component, in the directory at, without
// following a symlink, even as name itself.
func openAt(at int, name string, flags int) (int, error) {
	return unix.Openat2(at, name, &unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Resolve: unix.RESOLVE_NO_SYMLINKS})
}

// lstatAt stats name in the directory at, not following a symlink.
func lstatAt(at int, name string) (*unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(at, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, err
	}
	return &st, nil
}

// fdPath names what the descriptor fd refers to, for the calls that take
// only a path (mount, umount).
func fdPath(fd int) string { return fmt.Sprintf("/proc/self/fd/%d", fd) }

// noFollow explains ELOOP, which otherwise reads "too many levels of
// symbolic links" for a single one that was not followed.
func noFollow(path string, err error) error {
	if errors.Is(err, unix.ELOOP) {
		return fmt.Errorf("%s is or leads through a symlink, which maps never follow: %w", path, err)
	}
	return err
}
