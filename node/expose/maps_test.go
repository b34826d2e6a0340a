package expose

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/p2pimg/p2pimg/node/api"
)

// mapHost is a daemon's --root, a layer exposed in it (a plain directory
// stands for the exposure: maps only bind or link into it) and a victim
// directory outside it that a map must never reach.
type mapHost struct {
	x      *Exposer
	root   string
	e      *Exposure
	victim string
}

func newMapHost(t *testing.T, mode api.Mode) *mapHost {
	t.Helper()
	h := &mapHost{root: t.TempDir(), victim: t.TempDir()}
	h.x = New(Config{DataDir: t.TempDir(), Root: h.root})
	h.e = &Exposure{Mode: mode, Path: filepath.Join(h.root, "opt", "app")}
	write(t, filepath.Join(h.e.Path, "etc", "app.conf"), "layer")
	write(t, filepath.Join(h.e.Path, "data", "f"), "layer data")
	write(t, filepath.Join(h.victim, "cfg"), "own")
	// Registered last, so it runs before the directories are removed: a
	// mount left behind (by a failing test) must not outlive it.
	t.Cleanup(func() {
		for _, dir := range []string{h.root, h.victim} {
			for _, m := range MountsUnder(dir) {
				unix.Unmount(m, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
			}
		}
	})
	return h
}

func (h *mapHost) path(p string) string { return filepath.Join(h.root, p) }

// snapshot lists what a directory holds: each path, its type and, for a
// file, what it reads.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == dir {
			return nil
		}
		s := p[len(dir):] + " " + d.Type().String()
		if d.Type().IsRegular() {
			b, _ := os.ReadFile(p)
			s += " " + string(b)
		}
		out = append(out, s)
		return nil
	})
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// A map never follows a symlink in SRC: with a component of SRC a
// symlink to a directory the daemon may write in (the state an
// unprivileged user racing the activation can bring about), nothing is
// mounted, made, moved or linked in that directory, whether the map is a
// bind (overlaid modes) or a symlink (materialized).
func TestMapNotThroughSymlink(t *testing.T) {
	for _, tc := range []struct {
		name string
		mode api.Mode
		src  string
	}{
		{"bind over an existing file", api.ModeOverlay, "/tmp/link/cfg"},
		{"bind on a new file", api.ModeOverlay, "/tmp/link/new"},
		{"bind on a new directory", api.ModeOverlay, "/tmp/link/sub/data"},
		{"bind through a symlink at SRC", api.ModeOverlay, "/tmp/cfg"},
		{"symlink over an existing file", api.ModeMaterialized, "/tmp/link/cfg"},
		{"symlink as a new file", api.ModeMaterialized, "/tmp/link/new"},
		{"symlink in a new directory", api.ModeMaterialized, "/tmp/link/sub/new"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.mode.Overlaid() {
				needOverlay(t)
			}
			h := newMapHost(t, tc.mode)
			must(t, os.MkdirAll(h.path("tmp"), 0o1777))
			must(t, os.Symlink(h.victim, h.path("tmp/link")))
			must(t, os.Symlink(filepath.Join(h.victim, "cfg"), h.path("tmp/cfg")))
			before := snapshot(t, h.victim)
			dst := "etc/app.conf"
			if strings.HasSuffix(tc.src, "/data") {
				dst = "data"
			}
			err := h.x.MapAll(h.e, []string{tc.src + "=" + dst}, func() error { return nil })
			if err == nil || !strings.Contains(err.Error(), "symlink") {
				t.Errorf("MapAll through a symlink: %v, want an error naming the symlink", err)
			}
			if len(h.e.Maps) != 0 {
				t.Errorf("maps recorded: %+v", h.e.Maps)
			}
			if m := MountsUnder(h.victim); len(m) > 0 {
				t.Errorf("mounted in the victim directory: %v", m)
			}
			if after := snapshot(t, h.victim); after != before {
				t.Errorf("the victim directory changed:\n%s\nwas:\n%s", after, before)
			}
		})
	}
}

// A map makes its path resolve into the layer (a bind on a new file, a
// new directory and an existing file; or symlinks with the originals kept
// aside), Remap binds again what was lost, and UnmapAll leaves nothing
// mounted and the originals as they were.
func TestMapAndUnmap(t *testing.T) {
	for _, mode := range []api.Mode{api.ModeOverlay, api.ModeMaterialized} {
		t.Run(string(mode), func(t *testing.T) {
			if mode.Overlaid() {
				needOverlay(t)
			}
			h := newMapHost(t, mode)
			write(t, h.path("etc/app.conf"), "port=22")
			maps := []string{"/etc/app.conf=etc/app.conf", "/etc/new/app.conf=etc/app.conf", "/srv/data=data"}
			saves := 0
			must(t, h.x.MapAll(h.e, maps, func() error { saves++; return nil }))
			if len(h.e.Maps) != 3 || saves != 3 {
				t.Fatalf("%d maps recorded, %d saves, want 3 and 3", len(h.e.Maps), saves)
			}
			check := func(what string) {
				t.Helper()
				for p, want := range map[string]string{"etc/app.conf": "layer", "etc/new/app.conf": "layer", "srv/data/f": "layer data"} {
					if got, err := os.ReadFile(h.path(p)); err != nil || string(got) != want {
						t.Fatalf("%s: /%s reads %q, %v; want %q", what, p, got, err, want)
					}
				}
			}
			check("mapped")
			if mode.Overlaid() {
				if n := len(MountsUnder(h.root)); n != 3 {
					t.Fatalf("%d mounts under the root, want 3", n)
				}
				// Lost behind the daemon's back (a FUSE view gone with it).
				must(t, unix.Unmount(h.path("srv/data"), unix.MNT_DETACH))
				must(t, h.x.Remap(h.e))
				check("mapped again")
			} else if got, err := os.ReadFile(h.path("etc/app.conf" + origSuffix)); err != nil || string(got) != "port=22" {
				t.Fatalf("the original kept aside: %q, %v", got, err)
			}
			must(t, h.x.UnmapAll(h.e, func() error { return nil }))
			if len(h.e.Maps) != 0 {
				t.Fatalf("maps still recorded: %+v", h.e.Maps)
			}
			if m := MountsUnder(h.root); len(m) > 0 {
				t.Fatalf("still mounted after UnmapAll: %v", m)
			}
			if got, err := os.ReadFile(h.path("etc/app.conf")); err != nil || string(got) != "port=22" {
				t.Fatalf("the original /etc/app.conf after UnmapAll: %q, %v", got, err)
			}
			for _, p := range []string{"etc/new/app.conf", "srv/data", "etc/app.conf" + origSuffix} {
				if _, err := os.Lstat(h.path(p)); !os.IsNotExist(err) {
					t.Fatalf("/%s outlived the map: %v", p, err)
				}
			}
		})
	}
}

// UnmapAll never undoes a bind through a symlink: a directory on the
// mapped path swapped for a symlink after the map was made leaves what
// the symlink leads to as it was (not unmounted, nothing removed).
func TestUnmapNotThroughSymlink(t *testing.T) {
	needOverlay(t)
	h := newMapHost(t, api.ModeOverlay)
	must(t, os.MkdirAll(h.path("tmp/d"), 0o755))
	must(t, h.x.MapAll(h.e, []string{"/tmp/d/cfg=etc/app.conf"}, func() error { return nil }))
	if !h.e.Maps[0].Created {
		t.Fatalf("the mount point was not recorded as made: %+v", h.e.Maps[0])
	}
	// The directory moves away (with the mount on it), and a symlink
	// takes its name.
	must(t, os.Rename(h.path("tmp/d"), h.path("tmp/moved")))
	must(t, os.Symlink(h.victim, h.path("tmp/d")))
	before := snapshot(t, h.victim)
	must(t, h.x.UnmapAll(h.e, func() error { return nil }))
	if after := snapshot(t, h.victim); after != before {
		t.Errorf("the victim directory changed:\n%s\nwas:\n%s", after, before)
	}
	if m := MountsUnder(h.victim); len(m) > 0 {
		t.Errorf("mounted in the victim directory: %v", m)
	}
}
