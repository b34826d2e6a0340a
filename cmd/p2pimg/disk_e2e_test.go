package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/p2pimg/p2pimg/node/api"
)

// blocksUnder sums the allocated 512-byte sectors of the files under dir.
func blocksUnder(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil {
			var st syscall.Stat_t
			if syscall.Lstat(p, &st) == nil {
				n += st.Blocks
			}
		}
		return nil
	})
	return n
}

// writeBlock writes one 4 KiB block of fill at block seek of the image
// at disk with dd (a real client, synced), as a guest's write would come.
func writeBlock(t *testing.T, disk string, fill byte, seek int) {
	t.Helper()
	block := filepath.Join(t.TempDir(), "block")
	if err := os.WriteFile(block, bytes.Repeat([]byte{fill}, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("dd", "if="+block, "of="+disk, "bs=4k", "count=1", fmt.Sprintf("seek=%d", seek), "conv=notrunc,fsync").CombinedOutput(); err != nil {
		t.Fatalf("dd into the activated image %s: %v: %s", disk, err, out)
	}
}

// withBlock is the image file img as writeBlock(fill, seek) leaves it.
func withBlock(t *testing.T, img string, fill byte, seek int) []byte {
	t.Helper()
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	copy(b[seek*4096:], bytes.Repeat([]byte{fill}, 4096))
	return b
}

// A disk image activated in fuse mode takes writes block by block: a
// 4 KiB dd adds one block to the data directory (its delta; nothing is
// copied up), reads show the write, deactivation is refused until the
// change is committed, the commit's only new chunk is the one written,
// and another host fetching the new version moves only that chunk.
func TestDiskImageCopyOnWrite(t *testing.T) {
	t.Parallel()
	adata, bdata, root := t.TempDir(), t.TempDir(), t.TempDir()
	needFUSE(t, adata, bdata, root)
	img := refImage(t, 32<<20, 7)
	a := startDaemon(t, adata, "--root", root, "--expose", "fuse", "--announce-interval", "200ms")
	mustCLI(t, a, "add", "vm:1", img, "--chunking", "fixed", "--chunk-size", "64K")
	id, err := a.Client.Identity(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b := startDaemon(t, bdata, "--peer", id.Addrs[0], "--announce-interval", "200ms")
	waitFor(t, "vm:1 in b's catalogue", func() bool {
		cl, err := b.Client.Catalog(context.Background())
		return err == nil && len(cl) == 1
	})
	mustCLI(t, b, "fetch", "vm:1")

	mustCLI(t, a, "activate", "vm:1", "--at", "/vm", "--hosts", "self", "--wait")
	disk := filepath.Join(root, "vm", "disk.raw")
	before := blocksUnder(t, adata)
	deltaBefore := blocksUnder(t, filepath.Join(adata, "delta"))
	writeBlock(t, disk, 0xee, 1234)
	if grew := blocksUnder(t, filepath.Join(adata, "delta")) - deltaBefore; grew != 8 {
		t.Fatalf("a 4 KiB write grew the disk delta by %d sectors, want 8 (one block)", grew)
	}
	t.Logf("data dir grew by %d KiB in all (the store's own files included)", (blocksUnder(t, adata)-before)/2)
	var st api.Stats
	if err := json.Unmarshal([]byte(mustCLI(t, a, "stats", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	if delta := blocksUnder(t, filepath.Join(adata, "delta")) * 512; st.DeltaBytes != delta || delta == 0 {
		t.Fatalf("stats counts %d bytes of disk deltas, the delta directory holds %d", st.DeltaBytes, delta)
	}
	if out := mustCLI(t, a, "stats"); !strings.Contains(out, "disk deltas") {
		t.Fatalf("stats does not show the disk deltas: %q", out)
	}
	if ents, err := os.ReadDir(filepath.Join(adata, "overlay", "vm:1", "upper")); err != nil || len(ents) > 0 {
		t.Fatalf("the overlay's upper directory holds %d entries (%v): the image was copied up", len(ents), err)
	}
	want := withBlock(t, img, 0xee, 1234)
	if got, err := os.ReadFile(disk); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the image after the write: %d bytes, %v; not the merged content", len(got), err)
	}

	_, errOut, code := cli(t, a, "deactivate", "vm:1", "--hosts", "self", "--wait", "--timeout", "20s")
	out, _, _ := cli(t, a, "status")
	if code == 0 || !strings.Contains(out+errOut, "deactivation refused") || !strings.Contains(out+errOut, "4096 bytes") {
		t.Fatalf("deactivate with a written disk: exit %d, %q, status %q; want a refusal with the size", code, errOut, out)
	}
	var res api.AddResult
	if err := json.Unmarshal([]byte(mustCLI(t, a, "--json", "commit", "--activation", "vm:1", "vm:2")), &res); err != nil {
		t.Fatal(err)
	}
	if res.NewChunks != 1 || res.NewBytes != 64<<10 {
		t.Fatalf("the commit made %d new chunks, %d bytes; want 1 chunk of 64 KiB", res.NewChunks, res.NewBytes)
	}
	waitFor(t, "vm:2 in b's catalogue", func() bool {
		cl, err := b.Client.Catalog(context.Background())
		return err == nil && len(cl) == 2
	})
	var fr api.FetchResult
	if err := json.Unmarshal([]byte(mustCLI(t, b, "--json", "fetch", "vm:2")), &fr); err != nil {
		t.Fatal(err)
	}
	if fr.FetchedChunks != 1 {
		t.Fatalf("b fetched %d chunks (%d bytes) of vm:2, want only the changed one", fr.FetchedChunks, fr.FetchedBytes)
	}
	co := t.TempDir()
	mustCLI(t, b, "checkout", "vm:2", co)
	if got, err := os.ReadFile(filepath.Join(co, "disk.raw")); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("vm:2 checked out on b: %d bytes, %v; not the written image", len(got), err)
	}
	mustCLI(t, a, "deactivate", "vm:1", "--hosts", "self", "--wait", "--timeout", "20s") // committed: allowed
	if _, err := os.Stat(filepath.Join(adata, "delta", "vm:1")); !os.IsNotExist(err) {
		t.Fatalf("the delta after deactivation: %v", err)
	}
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
}

// Writes into an activated layer are not lost to a later activation of
// it: another version at the same path is refused while the one in use
// holds uncommitted disk writes (it would show its disk without them, and
// a later deactivation would delete them), and so is a move to another
// path; a daemon killed meanwhile comes back with the old version mounted;
// after a commit the new version is exposed; activating the version in use
// again keeps the files written into it; --discard-changes throws writes
// away on purpose.
func TestActivationKeepsDiskWrites(t *testing.T) {
	t.Parallel()
	data, root := t.TempDir(), t.TempDir()
	needFUSE(t, data, root)
	img1, img2 := refImage(t, 8<<20, 11), refImage(t, 8<<20, 12)
	a := startDaemon(t, data, "--root", root, "--expose", "fuse", "--announce-interval", "200ms")
	defer func() {
		if t.Failed() {
			t.Logf("daemon log:\n%s", a.LogTail())
		}
	}()
	mustCLI(t, a, "add", "vm:1", img1, "--chunking", "fixed", "--chunk-size", "64K")
	mustCLI(t, a, "activate", "vm:1", "--at", "/vm", "--hosts", "self", "--wait")
	disk := filepath.Join(root, "vm", "disk.raw")
	write := func() { writeBlock(t, disk, 0x5a, 17) }
	written := func(img string) []byte { return withBlock(t, img, 0x5a, 17) }
	shows := func(what string, want []byte) {
		t.Helper()
		if got, err := os.ReadFile(disk); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: the activated image reads %d bytes (%v), not what it should", what, len(got), err)
		}
	}
	refused := func(what, size string, args ...string) {
		t.Helper()
		_, errOut, code := cli(t, a, args...)
		out, _, _ := cli(t, a, "status")
		if code == 0 || !strings.Contains(out+errOut, "activation refused") || !strings.Contains(out+errOut, size) || !strings.Contains(out+errOut, what) {
			t.Fatalf("%v with an uncommitted disk write: exit %d, %q, status %q; want a refusal naming %q and the size", args, code, errOut, out, what)
		}
	}

	write()
	mustCLI(t, a, "add", "vm:1", img2, "--chunking", "fixed", "--chunk-size", "64K") // a new version of vm:1
	refused("would not show them", "4096 bytes", "activate", "vm:1", "--at", "/vm", "--hosts", "self", "--wait", "--timeout", "20s")
	shows("after the refused version switch", written(img1))
	// A daemon killed while the switch is refused comes back with the old
	// version (and its writes) mounted where it was, still refusing.
	a.Kill()
	a = startDaemon(t, data, "--root", root, "--expose", "fuse", "--announce-interval", "200ms")
	waitFor(t, "the written first version mounted again after kill -9", func() bool {
		got, err := os.ReadFile(disk)
		return err == nil && bytes.Equal(got, written(img1))
	})
	waitFor(t, "the refusal reported again after the restart", func() bool {
		out, _, _ := cli(t, a, "status")
		return strings.Contains(out, "activation refused")
	})
	refused("moving it to", "4096 bytes", "activate", "vm:1", "--at", "/vm2", "--hosts", "self", "--wait", "--timeout", "20s")
	shows("after the refused move", written(img1))

	mustCLI(t, a, "commit", "--activation", "vm:1", "vm:mine")
	mustCLI(t, a, "activate", "vm:1", "--at", "/vm", "--hosts", "self", "--wait", "--timeout", "20s")
	want2, err := os.ReadFile(img2)
	if err != nil {
		t.Fatal(err)
	}
	shows("the new version after the commit", want2)
	co := t.TempDir()
	mustCLI(t, a, "checkout", "vm:mine", co)
	if got, err := os.ReadFile(filepath.Join(co, "disk.raw")); err != nil || !bytes.Equal(got, written(img1)) {
		t.Fatalf("the committed layer: %d bytes, %v; not the written first version", len(got), err)
	}

	// A file written beside the image goes to the overlay's upper
	// directory: activating the version in use again keeps it.
	note := filepath.Join(root, "vm", "note.txt")
	if err := os.WriteFile(note, []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustCLI(t, a, "activate", "vm:1", "--at", "/vm", "--hosts", "self", "--wait", "--timeout", "20s")
	if b, err := os.ReadFile(note); err != nil || string(b) != "mine" {
		t.Fatalf("a file written into the view after activating the same version again: %q, %v", b, err)
	}
	shows("the same version activated again", want2)

	write()
	refused("moving it to", "4100 bytes", "activate", "vm:1", "--at", "/vm2", "--hosts", "self", "--wait", "--timeout", "20s")
	// A commit keeps the file and the disk write: neither counts any
	// more, and the move goes through (the old place's writes are in
	// the committed layer).
	mustCLI(t, a, "commit", "--activation", "vm:1", "vm:mine2")
	mustCLI(t, a, "activate", "vm:1", "--at", "/vm2", "--hosts", "self", "--wait", "--timeout", "20s")
	co2 := t.TempDir()
	mustCLI(t, a, "checkout", "vm:mine2", co2)
	if b, err := os.ReadFile(filepath.Join(co2, "note.txt")); err != nil || string(b) != "mine" {
		t.Fatalf("the committed file: %q, %v", b, err)
	}
	if got, err := os.ReadFile(filepath.Join(co2, "disk.raw")); err != nil || !bytes.Equal(got, written(img2)) {
		t.Fatalf("the committed disk: %d bytes, %v; not the written second version", len(got), err)
	}
	// A change after a commit counts again.
	disk = filepath.Join(root, "vm2", "disk.raw")
	note = filepath.Join(root, "vm2", "note.txt")
	if err := os.WriteFile(note, []byte("again"), 0o644); err != nil {
		t.Fatal(err)
	}
	changed := func() bool { out, _, _ := cli(t, a, "status"); return strings.Contains(out, "changed locally") }
	waitFor(t, "status to show the file changed locally", changed)
	mustCLI(t, a, "commit", "--activation", "vm:1", "vm:mine3")
	waitFor(t, "status to stop showing changes once they are committed", func() bool { return !changed() })
	if err := os.WriteFile(note, []byte("agaiN"), 0o644); err != nil { // the same size
		t.Fatal(err)
	}
	_, errOut, code := cli(t, a, "deactivate", "vm:1", "--hosts", "self", "--wait", "--timeout", "20s")
	if out, _, _ := cli(t, a, "status"); code == 0 || !strings.Contains(out+errOut, "deactivation refused") {
		t.Fatalf("deactivation with a file changed after the last commit: exit %d, %q, status %q", code, errOut, out)
	}
	write()
	mustCLI(t, a, "deactivate", "vm:1", "--hosts", "self", "--discard-changes", "--wait", "--timeout", "20s")
	if _, err := os.Stat(filepath.Join(data, "delta", "vm:1")); !os.IsNotExist(err) {
		t.Fatalf("the delta after deactivating with --discard-changes: %v", err)
	}
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
}

// A version switch looks for local writes again once the new version is
// fetched: a VM writing into the old version while the new one arrives
// (here from a slow peer) keeps its writes, and the switch is refused.
func TestVersionSwitchSeesWritesDuringFetch(t *testing.T) {
	t.Parallel()
	adata, bdata, root := t.TempDir(), t.TempDir(), t.TempDir()
	needFUSE(t, adata, bdata, root)
	img1, img2 := refImage(t, 8<<20, 21), refImage(t, 24<<20, 22)
	a := startDaemon(t, adata, "--root", root, "--expose", "fuse", "--announce-interval", "200ms")
	defer func() {
		if t.Failed() {
			t.Logf("daemon log:\n%s", a.LogTail())
		}
	}()
	mustCLI(t, a, "add", "vm:1", img1, "--chunking", "fixed", "--chunk-size", "64K")
	mustCLI(t, a, "activate", "vm:1", "--at", "/vm", "--hosts", "self", "--wait")
	id, err := a.Client.Identity(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b := startDaemon(t, bdata, "--peer", id.Addrs[0], "--announce-interval", "200ms", "--max-upload", "2MB")
	// A new version, only on b, with a file beside the image.
	extra := filepath.Join(filepath.Dir(img2), "extra.txt")
	if err := os.WriteFile(extra, []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustCLI(t, b, "add", "vm:1", filepath.Dir(img2), "--chunking", "fixed", "--chunk-size", "64K")
	newCID := ""
	waitFor(t, "b's version of vm:1 in a's catalogue", func() bool {
		cl, err := a.Client.Catalog(context.Background())
		if err != nil {
			return false
		}
		for _, c := range cl {
			if c.Name == "vm:1" && c.Size == 24<<20+3 {
				newCID = c.CID
				return true
			}
		}
		return false
	})
	mustCLI(t, a, "activate", "vm:1", "--at", "/vm", "--hosts", "self")
	waitFor(t, "a fetching the new version", func() bool {
		out, _, _ := cli(t, a, "status")
		return strings.Contains(out, "fetching")
	})
	disk := filepath.Join(root, "vm", "disk.raw")
	writeBlock(t, disk, 0x77, 3)
	waitFor(t, "the switch refused once the new version is here", func() bool {
		out, _, _ := cli(t, a, "status")
		return strings.Contains(out, "activation refused") && strings.Contains(out, "version "+newCID+" would not show them")
	})
	if got, err := os.ReadFile(disk); err != nil || !bytes.Equal(got, withBlock(t, img1, 0x77, 3)) {
		t.Fatalf("the image after the refused switch: %d bytes, %v; not the old version with the write", len(got), err)
	}
	// A commit now is of the version in use, not of the one refused.
	mustCLI(t, a, "commit", "--activation", "vm:1", "vm:kept")
	co := t.TempDir()
	mustCLI(t, a, "checkout", "vm:kept", co)
	if got, err := os.ReadFile(filepath.Join(co, "disk.raw")); err != nil || !bytes.Equal(got, withBlock(t, img1, 0x77, 3)) {
		t.Fatalf("the commit after the refused switch: %d bytes, %v; not the old version with the write", len(got), err)
	}
	if _, err := os.Stat(filepath.Join(co, "extra.txt")); !os.IsNotExist(err) {
		t.Fatalf("the commit after the refused switch holds the refused version's extra.txt (%v)", err)
	}
	mustCLI(t, a, "deactivate", "vm:1", "--hosts", "self", "--discard-changes", "--wait", "--timeout", "20s")
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
}
