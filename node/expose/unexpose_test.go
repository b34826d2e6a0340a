package expose

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/p2pimg/p2pimg/node/api"
)

// needOverlay skips where overlay mounts cannot be made.
func needOverlay(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounts overlays: run as root")
	}
	if err := OverlayWorks(t.TempDir()); err != nil {
		t.Skipf("this host refuses overlay mounts: %v", err)
	}
}

// An overlay is never mounted through a symlink at its path (one swapped
// in after the path was checked must not move the mount), and what it
// would have covered is left as it was.
func TestOverlayNotThroughSymlink(t *testing.T) {
	needOverlay(t)
	x := New(Config{DataDir: t.TempDir()})
	lower, victim, dir := t.TempDir(), t.TempDir(), t.TempDir()
	write(t, filepath.Join(lower, "layer.txt"), "layer")
	write(t, filepath.Join(victim, "own.txt"), "own")
	e := &Exposure{Mode: api.ModeOverlay, Path: filepath.Join(dir, "at")}
	must(t, os.Symlink(victim, e.Path))
	err := x.overlayOn(e, "app:1", lower, nil, false, nil)
	if err == nil {
		unmountAt(e)
		t.Fatal("an overlay was mounted through a symlink")
	}
	if Mounted(victim) || Mounted(e.Path) {
		t.Fatalf("a mount was left at the symlink's target: %v", err)
	}
	if _, err := os.Stat(filepath.Join(victim, "layer.txt")); !os.IsNotExist(err) {
		t.Fatalf("the symlink's target shows the layer: %v", err)
	}
}

// Unexpose keeps what was written into an overlay after its changes were
// looked at (ErrWrittenMeanwhile, the upper directory kept), and drops it
// when told to discard.
func TestUnexposeKeepsLateWrites(t *testing.T) {
	needOverlay(t)
	x := New(Config{DataDir: t.TempDir()})
	lower := t.TempDir()
	write(t, filepath.Join(lower, "layer.txt"), "layer")
	e := &Exposure{Mode: api.ModeOverlay, Path: filepath.Join(t.TempDir(), "at")}
	must(t, x.overlayOn(e, "app:1", lower, nil, false, nil))
	defer unmountAt(e)
	if n, _ := x.Changes(e, "app:1"); n != 0 {
		t.Fatalf("%d changes before any write", n)
	}
	write(t, filepath.Join(e.Path, "late.txt"), "late") // after the caller looked
	err := x.Unexpose(e, "app:1", false)
	if !errors.Is(err, ErrWrittenMeanwhile) {
		t.Fatalf("Unexpose with a late write: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(x.UpperDir("app:1"), "late.txt")); err != nil || string(got) != "late" {
		t.Fatalf("the late write after the refused unexpose: %q, %v", got, err)
	}
	if !e.Exposed {
		t.Fatal("the exposure no longer says exposed: it would not be mounted again")
	}
	must(t, x.overlayOn(e, "app:1", lower, nil, true, nil))
	if got, err := os.ReadFile(filepath.Join(e.Path, "late.txt")); err != nil || string(got) != "late" {
		t.Fatalf("the late write mounted again: %q, %v", got, err)
	}
	must(t, x.Unexpose(e, "app:1", true))
	if _, err := os.Stat(x.UpperDir("app:1")); !os.IsNotExist(err) {
		t.Fatalf("the upper directory after a discarding unexpose: %v", err)
	}
}
