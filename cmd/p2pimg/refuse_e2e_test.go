package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/p2pimg/p2pimg/chunk/badgerstore"
)

// TestDeactivationRefusedWhileWritten: a deactivation is refused while a
// process holds a file of the view open for writing (what it wrote after
// the view was taken down would be lost), naming the process; a refusal
// stands until the operator asks again, even once a commit made the
// writes count as kept; asked again after the writer closed, it goes
// through.
func TestDeactivationRefusedWhileWritten(t *testing.T) {
	t.Parallel()
	data, root := t.TempDir(), t.TempDir()
	needFUSE(t, data, root)
	img := refImage(t, 4<<20, 21)
	a := startDaemon(t, data, "--root", root, "--expose", "fuse", "--announce-interval", "200ms")
	defer func() {
		if t.Failed() {
			t.Logf("daemon log:\n%s", a.LogTail())
		}
	}()
	mustCLI(t, a, "add", "vm:1", img, "--chunking", "fixed", "--chunk-size", "64K")
	mustCLI(t, a, "activate", "vm:1", "--at", "/vm", "--hosts", "self", "--wait")
	disk := filepath.Join(root, "vm", "disk.raw")
	f, err := os.OpenFile(disk, os.O_RDWR, 0) // opened for writing, nothing written yet
	if err != nil {
		t.Fatal(err)
	}
	out, errOut, code := cli(t, a, "deactivate", "vm:1", "--hosts", "self", "--wait", "--timeout", "20s")
	status := mustCLI(t, a, "status")
	defer func() { f.Close() }()
	if code == 0 || !strings.Contains(status, "open for writing") || !strings.Contains(status, "disk.raw") {
		t.Fatalf("deactivation with the disk open for writing: exit %d, %q %q; status %q", code, out, errOut, status)
	}
	// Another way to the same file (a bind elsewhere, as a VM manager
	// might make): found by its device, not its path.
	other := filepath.Join(t.TempDir(), "vm.raw")
	if err := os.WriteFile(other, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(disk, other, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	g, err := os.OpenFile(other, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Unmount(other, unix.MNT_DETACH); err != nil { // the open file keeps it
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	f = g
	_, errOut, code = cli(t, a, "deactivate", "vm:1", "--hosts", "self", "--wait", "--timeout", "20s")
	if status := mustCLI(t, a, "status"); code == 0 || !strings.Contains(status, "open for writing") {
		t.Fatalf("deactivation with the disk open for writing through a bind elsewhere: exit %d, %q; status %q", code, errOut, status)
	}
	// A version switch under the writer is refused too.
	mustCLI(t, a, "add", "vm:1", refImage(t, 4<<20, 22), "--chunking", "fixed", "--chunk-size", "64K")
	_, errOut, code = cli(t, a, "activate", "vm:1", "--at", "/vm", "--hosts", "self", "--wait", "--timeout", "20s")
	if status := mustCLI(t, a, "status"); code == 0 || !strings.Contains(status+errOut, "activation refused") || !strings.Contains(status+errOut, "open for writing") {
		t.Fatalf("a version switch with the disk open for writing: exit %d, %q; status %q", code, errOut, status)
	}
	// Written now, then committed: the refusal must not go ahead by itself.
	if _, err := f.WriteAt([]byte("kept"), 4096); err != nil {
		t.Fatal(err)
	}
	mustCLI(t, a, "commit", "--activation", "vm:1", "vm:mine")
	refusedAt := time.Now()
	for time.Since(refusedAt) < 8*time.Second { // beyond the 5 s a failure waits before it is retried
		if _, err := os.Stat(disk); err != nil {
			t.Fatalf("the refused deactivation went ahead by itself after %v: %v", time.Since(refusedAt), err)
		}
		if _, err := f.WriteAt([]byte("more"), 8192); err != nil {
			t.Fatalf("a write into the view after the refusal: %v", err)
		}
		time.Sleep(200 * time.Millisecond) // polling the state, not waiting for it
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	mustCLI(t, a, "commit", "--activation", "vm:1", "vm:mine2")
	mustCLI(t, a, "deactivate", "vm:1", "--hosts", "self", "--wait", "--timeout", "20s")
	if _, err := os.Stat(disk); !os.IsNotExist(err) {
		t.Fatalf("the disk after the deactivation asked again: %v", err)
	}
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
}

// TestActivationPathsExclusive: a layer is not exposed where another is
// (the same path, above or below it), nor over the daemon's data
// directory; the refusal names the other layer or the data directory and
// the first layer stays as it was.
func TestActivationPathsExclusive(t *testing.T) {
	t.Parallel()
	data, root := t.TempDir(), t.TempDir()
	needFUSE(t, data, root)
	tree := t.TempDir()
	writeTree(t, tree)
	a := startDaemon(t, data, "--root", root, "--expose", "fuse", "--announce-interval", "200ms")
	defer func() {
		if t.Failed() {
			t.Logf("daemon log:\n%s", a.LogTail())
		}
	}()
	mustCLI(t, a, "add", "one:1", tree)
	mustCLI(t, a, "add", "two:1", tree)
	mustCLI(t, a, "activate", "one:1", "--at", "/srv/one", "--hosts", "self", "--wait")
	for _, at := range []string{"/srv/one", "/srv", "/srv/one/sub"} {
		_, errOut, code := cli(t, a, "activate", "two:1", "--at", at, "--hosts", "self", "--wait", "--timeout", "20s")
		status := mustCLI(t, a, "status")
		if code == 0 || !strings.Contains(status+errOut, "where one:1 is exposed") {
			t.Fatalf("two:1 at %s, over one:1 at /srv/one: exit %d, %q; status %q", at, code, errOut, status)
		}
	}
	if !fileExists(filepath.Join(root, "srv", "one", "README")) {
		t.Fatal("one:1 no longer shows after the refusals")
	}
	mustCLI(t, a, "deactivate", "two:1", "--hosts", "self", "--wait", "--timeout", "20s")
	if !fileExists(filepath.Join(root, "srv", "one", "README")) {
		t.Fatal("one:1 no longer shows after two:1's refused activation was withdrawn")
	}
	// Maps: not onto another layer's map or exposure.
	mustCLI(t, a, "deactivate", "one:1", "--hosts", "self", "--wait", "--timeout", "20s")
	mustCLI(t, a, "activate", "one:1", "--at", "/srv/one", "--hosts", "self", "--map", "/etc/app.conf=etc/app.conf", "--wait")
	for _, m := range []string{"/etc/app.conf=README", "/srv/one/README=README"} {
		_, errOut, code := cli(t, a, "activate", "two:1", "--at", "/srv/two", "--hosts", "self", "--map", m, "--wait", "--timeout", "20s")
		if status := mustCLI(t, a, "status"); code == 0 || !strings.Contains(status+errOut, "where one:1 is exposed or mapped") {
			t.Fatalf("two:1 mapping %s: exit %d, %q; status %q", m, code, errOut, status)
		}
	}
	// The data directory: only reachable when it lies under the root.
	dataUnder := filepath.Join(root, "var", "p2pimg")
	if err := os.MkdirAll(dataUnder, 0o755); err != nil {
		t.Fatal(err)
	}
	b := startDaemon(t, dataUnder, "--root", root, "--expose", "fuse", "--announce-interval", "200ms")
	mustCLI(t, b, "add", "three:1", tree)
	_, errOut, code := cli(t, b, "activate", "three:1", "--at", "/var", "--hosts", "self", "--wait", "--timeout", "20s")
	if status := mustCLI(t, b, "status"); code == 0 || !strings.Contains(status+errOut, "data directory") {
		t.Fatalf("an activation over the data directory: exit %d, %q; status %q", code, errOut, status)
	}
	_, errOut, code = cli(t, b, "activate", "three:1", "--at", "/srv/three", "--map", "/var/p2pimg/identity.key=README", "--hosts", "self", "--wait", "--timeout", "20s")
	if status := mustCLI(t, b, "status"); code == 0 || !strings.Contains(status+errOut, "data directory") {
		t.Fatalf("a map over the data directory: exit %d, %q; status %q", code, errOut, status)
	}
	for _, d := range []interface{ Stop() error }{a, b} {
		if err := d.Stop(); err != nil {
			t.Fatal(err)
		}
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// TestMaterializedChangesRefused: a materialised view (the fallback where
// FUSE and overlays are not available) written into is not deactivated
// without --discard-changes either: the refusal names what changed.
func TestMaterializedChangesRefused(t *testing.T) {
	t.Parallel()
	data, root := t.TempDir(), t.TempDir()
	tree := t.TempDir()
	writeTree(t, tree)
	a := startDaemon(t, data, "--root", root, "--expose", "materialized", "--announce-interval", "200ms")
	defer func() {
		if t.Failed() {
			t.Logf("daemon log:\n%s", a.LogTail())
		}
	}()
	mustCLI(t, a, "add", "app:1", tree)
	mustCLI(t, a, "activate", "app:1", "--at", "/opt/app", "--hosts", "self", "--wait")
	mustCLI(t, a, "deactivate", "app:1", "--hosts", "self", "--wait", "--timeout", "20s") // unchanged: goes through
	mustCLI(t, a, "activate", "app:1", "--at", "/opt/app", "--hosts", "self", "--wait")
	conf := filepath.Join(root, "opt", "app", "etc", "app.conf")
	if err := os.WriteFile(conf, []byte("port=81\n"), 0o644); err != nil { // the same size, a new time
		t.Fatal(err)
	}
	_, errOut, code := cli(t, a, "deactivate", "app:1", "--hosts", "self", "--wait", "--timeout", "20s")
	if status := mustCLI(t, a, "status"); code == 0 || !strings.Contains(status+errOut, "1 path(s), 8 bytes changed locally") {
		t.Fatalf("deactivating a written materialised view: exit %d, %q; status %q", code, errOut, status)
	}
	if got, err := os.ReadFile(conf); err != nil || string(got) != "port=81\n" {
		t.Fatalf("the written file after the refusal: %q, %v", got, err)
	}
	mustCLI(t, a, "deactivate", "app:1", "--hosts", "self", "--discard-changes", "--wait", "--timeout", "20s")
	if fileExists(conf) {
		t.Fatal("the view is still there after deactivating with --discard-changes")
	}
	// A write that puts size and time back (cp -p, tar) is seen too.
	mustCLI(t, a, "activate", "app:1", "--at", "/opt/app", "--hosts", "self", "--wait")
	fi, err := os.Stat(conf)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte("port=82\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(conf, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = cli(t, a, "deactivate", "app:1", "--hosts", "self", "--wait", "--timeout", "20s")
	if status := mustCLI(t, a, "status"); code == 0 || !strings.Contains(status+errOut, "changed locally") {
		t.Fatalf("deactivating after a write that put size and time back: exit %d, %q; status %q", code, errOut, status)
	}
	mustCLI(t, a, "deactivate", "app:1", "--hosts", "self", "--discard-changes", "--wait", "--timeout", "20s")
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
}

// TestDeactivationResumedAfterRestart: a deactivation the daemon did not
// finish (its record says deactivating: it was killed midway) is finished
// after a restart on a host alone, whose catalogue no longer holds the
// request; with local writes it is refused instead, the view kept.
func TestDeactivationResumedAfterRestart(t *testing.T) {
	t.Parallel()
	data, root := t.TempDir(), t.TempDir()
	needFUSE(t, data, root)
	tree := t.TempDir()
	writeTree(t, tree)
	a := startDaemon(t, data, "--root", root, "--expose", "fuse", "--announce-interval", "200ms")
	mustCLI(t, a, "add", "app:1", tree)
	mustCLI(t, a, "add", "app2:1", tree)
	mustCLI(t, a, "activate", "app:1", "--at", "/opt/app", "--hosts", "self", "--wait")
	mustCLI(t, a, "activate", "app2:1", "--at", "/opt/app2", "--hosts", "self", "--wait")
	if err := os.WriteFile(filepath.Join(root, "opt", "app2", "mine.txt"), []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	// What a kill midway leaves: the records say deactivating.
	db, err := badgerstore.Open(filepath.Join(data, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, layer := range []string{"app:1", "app2:1"} {
		recs, err := db.Records("act/" + layer)
		if err != nil || len(recs) != 1 {
			t.Fatalf("the record of %s: %d, %v", layer, len(recs), err)
		}
		for k, v := range recs {
			var rec map[string]any
			if err := json.Unmarshal(v, &rec); err != nil {
				t.Fatal(err)
			}
			rec["state"] = "deactivating"
			b, _ := json.Marshal(rec)
			if err := db.PutRecord(k, b); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	a = startDaemon(t, data, "--root", root, "--expose", "fuse", "--announce-interval", "200ms")
	defer func() {
		if t.Failed() {
			t.Logf("daemon log:\n%s", a.LogTail())
		}
	}()
	waitFor(t, "app:1's deactivation finished after the restart", func() bool {
		out, _, _ := cli(t, a, "status", "--layer", "app:1")
		return strings.Contains(out, "inactive")
	})
	if fileExists(filepath.Join(root, "opt", "app", "README")) {
		t.Fatal("app:1 still shows after its deactivation finished")
	}
	waitFor(t, "app2:1's deactivation refused for its local write", func() bool {
		out, _, _ := cli(t, a, "status", "--layer", "app2:1")
		return strings.Contains(out, "deactivation refused")
	})
	waitFor(t, "app2:1 mounted again with the write", func() bool {
		got, err := os.ReadFile(filepath.Join(root, "opt", "app2", "mine.txt"))
		return err == nil && string(got) == "mine" && fileExists(filepath.Join(root, "opt", "app2", "README"))
	})
	mustCLI(t, a, "deactivate", "app2:1", "--hosts", "self", "--discard-changes", "--wait", "--timeout", "20s")
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
}
