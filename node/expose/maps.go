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
			if _, err := os.Lstat(mp.Src); errors.Is(err, os.ErrNotExist) {
				if err := mountPoint(mp.Src, mp.Dst); err != nil {
					return fmt.Errorf("map %s: %w", m, err)
				}
				mp.Created = true
			}
			if err := unix.Mount(mp.Dst, mp.Src, "", unix.MS_BIND, ""); err != nil {
				if mp.Created {
					os.Remove(mp.Src)
				}
				return fmt.Errorf("map %s: bind %s: %w", m, mp.Src, err)
			}
		} else {
			if err := os.MkdirAll(filepath.Dir(mp.Src), 0o755); err != nil {
				return err
			}
			if _, err := os.Lstat(mp.Src); err == nil {
				if err := os.Rename(mp.Src, mp.Src+origSuffix); err != nil {
					return fmt.Errorf("map %s: %w", m, err)
				}
				mp.Saved = true
			}
			if err := os.Symlink(mp.Dst, mp.Src); err != nil {
				if mp.Saved {
					os.Rename(mp.Src+origSuffix, mp.Src)
				}
				return fmt.Errorf("map %s: %w", m, err)
			}
		}
		e.Maps = append(e.Maps, mp)
		if err := save(); err != nil {
			return err
		}
	}
	return nil
}

// mountPoint makes an empty file or directory at src, like dst, to mount on.
func mountPoint(src, dst string) error {
	fi, err := os.Stat(dst)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return os.MkdirAll(src, 0o755)
	}
	if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(src, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

// UnmapAll restores every redirected path, last first.
func (x *Exposer) UnmapAll(e *Exposure, save func() error) error {
	for len(e.Maps) > 0 {
		mp := e.Maps[len(e.Maps)-1]
		if mp.Bind {
			if Mounted(mp.Src) {
				if err := unix.Unmount(mp.Src, unix.MNT_DETACH); err != nil {
					return fmt.Errorf("unmap %s: %w", mp.Src, err)
				}
			}
			if mp.Created {
				os.Remove(mp.Src)
			}
		} else {
			if fi, err := os.Lstat(mp.Src); err == nil && fi.Mode()&os.ModeSymlink != 0 {
				if err := os.Remove(mp.Src); err != nil {
					return fmt.Errorf("unmap %s: %w", mp.Src, err)
				}
			}
			if mp.Saved {
				if err := os.Rename(mp.Src+origSuffix, mp.Src); err != nil {
					return fmt.Errorf("unmap %s: restore the original: %w", mp.Src, err)
				}
			}
		}
		e.Maps = e.Maps[:len(e.Maps)-1]
		if err := save(); err != nil {
			return err
		}
	}
	return nil
}

// Remap makes again the bind mounts of e's maps that are gone (taken down
// with a FUSE exposure when the daemon stopped); symlinks stay in place.
func (x *Exposer) Remap(e *Exposure) error {
	for _, mp := range e.Maps {
		if !mp.Bind || Mounted(mp.Src) {
			continue
		}
		if err := unix.Mount(mp.Dst, mp.Src, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("map %s again: bind %s: %w", mp.Src, mp.Dst, err)
		}
	}
	return nil
}
