package main

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/expose"
	"github.com/p2pimg/p2pimg/node/expose/fuseview"
	"github.com/p2pimg/p2pimg/testnet/refimage"
)

// needFUSE skips, saying why, where this host cannot serve FUSE views
// with overlays above them; otherwise it makes sure no mount under dirs
// outlives the test, whatever happens in it.
func needFUSE(t *testing.T, dirs ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("fuse exposure tests mount FUSE and overlay file systems: run as root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("fuse exposure tests need /dev/fuse: %v", err)
	}
	if err := fuseview.Works(t.TempDir()); err != nil {
		t.Skipf("this host refuses FUSE mounts: %v", err)
	}
	if err := expose.OverlayWorks(t.TempDir()); err != nil {
		t.Skipf("this host refuses overlay mounts: %v", err)
	}
	t.Cleanup(func() {
		for _, d := range dirs {
			for _, mp := range expose.MountsUnder(d) {
				t.Errorf("mount left behind: %s", mp)
				unix.Unmount(mp, unix.MNT_DETACH)
			}
		}
	})
}

// A layer activated in fuse mode is served from the store (no checkout
// under the data dir) with an overlay above it. A daemon killed with -9
// leaves dead mounts; the next start clears them and mounts the layer
// again with the writes made to it; a clean stop unmounts everything.
func TestFUSEExposureSurvivesKill(t *testing.T) {
	t.Parallel()
	data, root, src := t.TempDir(), t.TempDir(), t.TempDir()
	needFUSE(t, data, root)
	writeTree(t, src)
	flags := []string{"--root", root, "--expose", "fuse"}
	d := startDaemon(t, data, flags...)
	mustCLI(t, d, "add", "app:1", src)
	mustCLI(t, d, "activate", "app:1", "--at", "/opt/app", "--hosts", "self", "--wait")
	path := filepath.Join(root, "opt", "app")
	if b, err := os.ReadFile(filepath.Join(path, "etc", "app.conf")); err != nil || string(b) != "port=80\n" {
		t.Fatalf("etc/app.conf through the view: %q, %v", b, err)
	}
	if views := expose.MountsUnder(filepath.Join(data, "fuse")); len(views) != 1 {
		t.Fatalf("fuse views mounted: %q, want one", views)
	}
	if _, err := os.Stat(filepath.Join(data, "views")); !os.IsNotExist(err) {
		t.Fatalf("a checkout under views/ in fuse mode (%v)", err)
	}
	sts, err := d.Client.Activations(context.Background())
	if err != nil || len(sts) != 1 || sts[0].Mode != api.ModeFUSE {
		t.Fatalf("reported states %+v (%v), want one in mode fuse", sts, err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(path, "written.txt"), []byte("kept"), 0o644))

	d.Kill()
	d = startDaemon(t, data, flags...)
	defer func() {
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.LogTail())
		}
	}()
	waitFor(t, "the layer mounted again after kill -9", func() bool {
		b, err := os.ReadFile(filepath.Join(path, "README"))
		return err == nil && string(b) == "hi"
	})
	if b, err := os.ReadFile(filepath.Join(path, "written.txt")); err != nil || string(b) != "kept" {
		t.Fatalf("the write made before the kill: %q, %v", b, err)
	}
	if views := expose.MountsUnder(filepath.Join(data, "fuse")); len(views) != 1 {
		t.Fatalf("fuse views mounted after the restart: %q, want one (the dead one cleared)", views)
	}
	must(d.Stop())
	for _, dir := range []string{data, root} {
		if mps := expose.MountsUnder(dir); len(mps) > 0 {
			t.Fatalf("mounted after the daemon stopped: %q", mps)
		}
	}
}

// An exposed layer is guarded: rm is refused naming where it is exposed;
// gc keeps its chunks even after its name moved to another version;
// status says it changed locally; deactivation is refused with the size
// of the changes unless --discard-changes.
func TestExposedLayerGuards(t *testing.T) {
	t.Parallel()
	data, root, src := t.TempDir(), t.TempDir(), t.TempDir()
	needFUSE(t, data, root)
	writeTree(t, src)
	d := startDaemon(t, data, "--root", root, "--expose", "fuse")
	mustCLI(t, d, "add", "app:1", src)
	mustCLI(t, d, "activate", "app:1", "--at", "/opt/app", "--hosts", "self", "--wait")
	path := filepath.Join(root, "opt", "app")

	_, errOut, code := cli(t, d, "rm", "app:1")
	if code == 0 || !strings.Contains(errOut, "exposed on this host") || !strings.Contains(errOut, path) {
		t.Fatalf("rm of an exposed layer: exit %d, %q; want a refusal naming %s", code, errOut, path)
	}
	// The name moves to another version; gc must keep the exposed one.
	other := t.TempDir()
	if err := os.WriteFile(filepath.Join(other, "x"), []byte("other"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustCLI(t, d, "add", "app:1", other)
	mustCLI(t, d, "gc")
	if b, err := os.ReadFile(filepath.Join(path, "bin", "app")); err != nil || string(b) != strings.Repeat("binary", 50000) {
		t.Fatalf("bin/app after gc (first read through the view): %d bytes, %v", len(b), err)
	}

	if err := os.WriteFile(filepath.Join(path, "local.txt"), []byte("12345"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "status showing the local change", func() bool {
		out, _, _ := cli(t, d, "status")
		return strings.Contains(out, "changed locally")
	})
	_, errOut, code = cli(t, d, "deactivate", "app:1", "--hosts", "self", "--wait", "--timeout", "20s")
	out, _, _ := cli(t, d, "status")
	if code == 0 || !strings.Contains(out+errOut, "deactivation refused") || !strings.Contains(out+errOut, "5 bytes") {
		t.Fatalf("deactivate with local changes: exit %d, %q, status %q; want a refusal with the size", code, errOut, out)
	}
	if b, err := os.ReadFile(filepath.Join(path, "local.txt")); err != nil || string(b) != "12345" {
		t.Fatalf("the local change after the refusal: %q, %v", b, err)
	}
	mustCLI(t, d, "deactivate", "app:1", "--hosts", "self", "--wait", "--discard-changes")
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("%s after deactivation: %v", path, err)
	}
	if mps := expose.MountsUnder(data); len(mps) > 0 {
		t.Fatalf("mounted after deactivation: %q", mps)
	}
}

// Lazy activation: the second daemon exposes an image it lacks as soon as
// the manifest is here; random reads return the image's bytes while the
// background fetch is still under way (fewer bytes stored than the image
// when they return), and the layer then completes.
func TestLazyActivation(t *testing.T) {
	t.Parallel()
	adata, bdata, root := t.TempDir(), t.TempDir(), t.TempDir()
	needFUSE(t, adata, bdata, root)
	const size = 64 << 20
	img := refImage(t, size, 5)
	a := startDaemon(t, adata, "--max-upload", "8MB", "--announce-interval", "200ms")
	mustCLI(t, a, "add", "vm:1", img)
	id, err := a.Client.Identity(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b := startDaemon(t, bdata, "--peer", id.Addrs[0], "--announce-interval", "200ms", "--root", root, "--expose", "fuse")
	waitFor(t, "vm:1 in b's catalogue", func() bool {
		cl, err := b.Client.Catalog(context.Background())
		return err == nil && len(cl) == 1
	})
	mustCLI(t, b, "activate", "vm:1", "--at", "/vm", "--hosts", "self", "--lazy", "--wait") // lazy for this activation, not the daemon's default
	orig, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	view, err := os.Open(filepath.Join(root, "vm", "disk.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer view.Close()
	r := rand.New(rand.NewPCG(9, 9))
	want, got := make([]byte, 64<<10), make([]byte, 64<<10)
	for range 32 {
		off := r.Int64N(size - int64(len(got)))
		orig.ReadAt(want, off)
		if _, err := view.ReadAt(got, off); err != nil {
			t.Fatalf("read at %d through the lazy view: %v", off, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("read at %d through the lazy view: wrong bytes", off)
		}
	}
	st, err := b.Client.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.StoredBytes >= size {
		t.Fatalf("b stored %d bytes when the reads returned: the whole image (%d) was fetched first", st.StoredBytes, size)
	}
	t.Logf("reads returned with %d of %d bytes here", st.StoredBytes, size)
	waitFor(t, "the background fetch completing the layer", func() bool {
		out, _, _ := cli(t, b, "layers")
		return strings.Contains(out, "complete") && !strings.Contains(out, "incomplete")
	})
	view.Close()
	if err := b.Stop(); err != nil { // a clean stop leaves no mount behind
		t.Fatal(err)
	}
}

// refImage writes a reference disk image of size bytes (seed picks its
// content) as disk.raw in a temporary directory and returns its path.
func refImage(t *testing.T, size int64, seed uint64) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.raw")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := refimage.Write(f, size, seed); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return img
}
