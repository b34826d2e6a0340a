package testnet_test

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/expose"
	"github.com/p2pimg/p2pimg/testnet"
)

// readTree returns every regular file and symlink under dir, relative path
// -> content (or "-> target"), and every directory as "dir/".
func readTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case rel == ".":
		case fi.IsDir():
			out[rel+"/"] = ""
		case fi.Mode()&os.ModeSymlink != 0:
			tgt, _ := os.Readlink(p)
			out[rel] = "-> " + tgt
		default:
			b, _ := os.ReadFile(p)
			out[rel] = string(b)
		}
		return nil
	})
	return out
}

func sameFiles(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	var diff []string
	for k, v := range want {
		if got[k] != v {
			diff = append(diff, k)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			diff = append(diff, "+"+k)
		}
	}
	sort.Strings(diff)
	if len(diff) > 0 {
		t.Fatalf("%s differs at %v", what, diff)
	}
}

func checkoutTree(t *testing.T, nd *testnet.Node, name string) map[string]string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	if _, err := nd.Client.Checkout(ctx, api.CheckoutRequest{Name: name, Dir: out}, nil); err != nil {
		t.Fatal(err)
	}
	return readTree(t, out)
}

// Split two images into a common layer and thin versions: each checks out
// as before, here and on a host that fetches only the thin version (the
// common layer comes with it). Then a commit of an overlay upper directory
// on top of a layer, with a removal and an opaque directory.
func TestSplitFetchAndCommit(t *testing.T) {
	net := testnet.New(t, 2)
	shared := map[string]string{"usr/lib/libc.so": "libc", "usr/bin/sh": "shell", "etc/os-release": "os 1"}
	a := map[string]string{"opt/a/app": "app a", "etc/a.conf": "a"}
	b := map[string]string{"opt/b/app": "app b", "etc/os-release": "os 1 (patched in b)"}
	for k, v := range shared {
		if _, ok := a[k]; !ok {
			a[k] = v
		}
		if _, ok := b[k]; !ok {
			b[k] = v
		}
	}
	srcA, srcB := tree(t, a), tree(t, b)
	// Same mtimes on the shared files, as in images built from one base.
	for k := range shared {
		for _, src := range []string{srcA, srcB} {
			os.Chtimes(filepath.Join(src, k), testTime, testTime)
		}
	}
	n0, n1 := net.Nodes[0], net.Nodes[1]
	for name, src := range map[string]string{"img-a:1": srcA, "img-b:1": srcB} {
		if _, err := n0.Client.Add(ctx, api.AddRequest{Name: name, Path: src}, nil); err != nil {
			t.Fatal(err)
		}
	}
	wantA, wantB := readTree(t, srcA), readTree(t, srcB)
	r, err := n0.Client.Split(ctx, api.SplitRequest{Layers: []string{"img-a:1", "img-b:1"}, Common: "base:1"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Common.Size != int64(len("libc")+len("shell")) {
		t.Fatalf("common layer holds %d bytes, want the two shared files", r.Common.Size)
	}
	sameFiles(t, "img-a:1 after split", checkoutTree(t, n0, "img-a:1"), wantA)
	sameFiles(t, "img-b:1 after split", checkoutTree(t, n0, "img-b:1"), wantB)

	waitCatalog(t, net, n1, "img-a:1", r.Layers[0].CID)
	if _, err := n1.Client.Fetch(ctx, "img-a:1", nil); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, "img-a:1 fetched", checkoutTree(t, n1, "img-a:1"), wantA)

	// A security patch committed to the common layer reaches img-a by a
	// rebase; img-b, which changed the same file itself, is refused.
	libc := tree(t, map[string]string{"usr/lib/libc.so": "libc patched"})
	if _, err := n0.Client.Commit(ctx, api.CommitRequest{Name: "base:2", Base: "base:1", Upper: libc}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := n0.Client.Rebase(ctx, "img-a:1", "base:2"); err != nil {
		t.Fatal(err)
	}
	patched := map[string]string{}
	for k, v := range wantA {
		patched[k] = v
	}
	patched["usr/lib/libc.so"] = "libc patched"
	sameFiles(t, "img-a:1 rebased", checkoutTree(t, n0, "img-a:1"), patched)
	osr := tree(t, map[string]string{"etc/os-release": "os 1.1"})
	if _, err := n0.Client.Commit(ctx, api.CommitRequest{Name: "base:3", Base: "base:1", Upper: osr}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := n0.Client.Rebase(ctx, "img-b:1", "base:3"); err == nil || !strings.Contains(err.Error(), "etc/os-release") {
		t.Fatalf("conflicting rebase: %v", err)
	}
	sameFiles(t, "img-b:1 after a refused rebase", checkoutTree(t, n0, "img-b:1"), wantB)

	// Commit: an upper directory that changes a file, adds one, removes
	// etc/a.conf and makes opt/a opaque (everything below it replaced).
	var upper string
	if expose.OverlayWorks(t.TempDir()) == nil {
		// A real overlayfs: the kernel writes the whiteout and the opaque
		// directory into the upper directory.
		upper = overlayChanges(t, n0, "img-a:1")
	} else {
		upper = syntheticUpper(t)
	}
	if _, err := n0.Client.Commit(ctx, api.CommitRequest{Name: "img-a:2", Base: "img-a:1", Upper: upper}, nil); err != nil {
		t.Fatal(err)
	}
	want2 := map[string]string{}
	for k, v := range patched {
		want2[k] = v
	}
	delete(want2, "etc/a.conf")
	delete(want2, "opt/a/app")
	want2["etc/os-release"], want2["opt/a/new"], want2["srv/"], want2["srv/data"] = "os 2", "new app", "", "d"
	sameFiles(t, "img-a:2", checkoutTree(t, n0, "img-a:2"), want2)
}

// overlayChanges mounts an overlay over a checkout of layer, makes the
// commit test's changes through it and returns the upper directory.
func overlayChanges(t *testing.T, nd *testnet.Node, layer string) string {
	t.Helper()
	base := t.TempDir()
	lower, upper, work, merged := filepath.Join(base, "lower"), filepath.Join(base, "upper"), filepath.Join(base, "work"), filepath.Join(base, "merged")
	if _, err := nd.Client.Checkout(ctx, api.CheckoutRequest{Name: layer, Dir: lower}, nil); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{upper, work, merged} {
		os.Mkdir(d, 0o755)
	}
	if err := unix.Mount("overlay", merged, "overlay", 0, "lowerdir="+lower+",upperdir="+upper+",workdir="+work); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(merged, 0)
	m := func(p string) string { return filepath.Join(merged, p) }
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(m("etc/os-release"), []byte("os 2"), 0o644))
	must(os.Remove(m("etc/a.conf")))
	must(os.RemoveAll(m("opt/a")))
	must(os.Mkdir(m("opt/a"), 0o755))
	must(os.WriteFile(m("opt/a/new"), []byte("new app"), 0o644))
	must(os.Mkdir(m("srv"), 0o755))
	must(os.WriteFile(m("srv/data"), []byte("d"), 0o644))
	return upper
}

// syntheticUpper is the same changes written as an upper directory by hand.
func syntheticUpper(t *testing.T) string {
	upper := tree(t, map[string]string{"etc/os-release": "os 2", "opt/a/new": "new app", "srv/data": "d"})
	if os.Geteuid() == 0 {
		if err := syscall.Mknod(filepath.Join(upper, "etc", "a.conf"), syscall.S_IFCHR, 0); err != nil {
			t.Fatal(err)
		}
		if err := unix.Setxattr(filepath.Join(upper, "opt", "a"), "trusted.overlay.opaque", []byte("y"), 0); err != nil {
			t.Skipf("trusted xattrs refused here: %v", err)
		}
	} else { // the same changes, already in OCI form
		os.WriteFile(filepath.Join(upper, "etc", ".wh.a.conf"), nil, 0o644)
		os.WriteFile(filepath.Join(upper, "opt", "a", ".wh..wh..opq"), nil, 0o644)
	}
	return upper
}

// A commit that touches a path the base's layer policy locks is refused
// with the path named.
func TestCommitRefusesLockedPath(t *testing.T) {
	net := testnet.New(t, 1)
	n0 := net.Nodes[0]
	src := tree(t, map[string]string{"etc/app.conf": "port=80", "bin/app": "x"})
	if _, err := n0.Client.Add(ctx, api.AddRequest{Name: "app:1", Path: src, Policy: `locked = ["/etc/app.conf"]`}, nil); err != nil {
		t.Fatal(err)
	}
	upper := tree(t, map[string]string{"etc/app.conf": "port=8080"})
	_, err := n0.Client.Commit(ctx, api.CommitRequest{Name: "app:2", Base: "app:1", Upper: upper}, nil)
	if err == nil || !strings.Contains(err.Error(), "/etc/app.conf") || !strings.Contains(err.Error(), "locks") {
		t.Fatalf("commit over a locked path: %v", err)
	}
	ok := tree(t, map[string]string{"bin/app": "y"})
	if _, err := n0.Client.Commit(ctx, api.CommitRequest{Name: "app:2", Base: "app:1", Upper: ok}, nil); err != nil {
		t.Fatalf("commit that leaves the locked path alone: %v", err)
	}
}

var testTime = mustTime("2026-01-02T03:04:05Z")

func mustTime(s string) (t time.Time) {
	t, _ = time.Parse(time.RFC3339, s)
	return t
}
