package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/client"
	"github.com/p2pimg/p2pimg/node/expose"
	"github.com/p2pimg/p2pimg/testnet"
	"github.com/p2pimg/p2pimg/testnet/refimage"
)

// bin is the p2pimg binary built once for every end-to-end test.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "p2pimg-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "p2pimg")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build p2pimg: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func startDaemon(t *testing.T, data string, extra ...string) *testnet.Daemon {
	t.Helper()
	d, err := testnet.StartDaemon(context.Background(), bin, data, extra...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Kill() })
	return d
}

// cli runs the binary against a daemon and returns stdout, stderr and the exit code.
func cli(t *testing.T, d *testnet.Daemon, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	if d != nil {
		cmd.Env = append(os.Environ(), "P2PIMG_SOCKET="+d.Client.Socket())
	} else {
		cmd.Env = append(os.Environ(), "P2PIMG_SOCKET="+filepath.Join(t.TempDir(), "none.sock"))
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

func mustCLI(t *testing.T, d *testnet.Daemon, args ...string) string {
	t.Helper()
	out, errOut, code := cli(t, d, args...)
	if code != 0 {
		t.Fatalf("p2pimg %s: exit %d: %s", strings.Join(args, " "), code, errOut)
	}
	return out
}

func writeTree(t *testing.T, dir string) {
	t.Helper()
	for p, body := range map[string]string{"etc/app.conf": "port=80\n", "bin/app": strings.Repeat("binary", 50000), "README": "hi"} {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, p), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Symlink("bin/app", filepath.Join(dir, "app"))
}

func TestCLIWorkflow(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, t.TempDir())
	src := t.TempDir()
	writeTree(t, src)

	id := strings.TrimSpace(mustCLI(t, d, "add", "web:1", src))
	if !strings.HasPrefix(id, "b") {
		t.Fatalf("add printed %q, want a CID", id)
	}
	var res api.AddResult
	if err := json.Unmarshal([]byte(mustCLI(t, d, "add", "web:2", src, "--json")), &res); err != nil {
		t.Fatal(err)
	}
	if res.Layer.CID != id || res.NewBytes != 0 {
		t.Fatalf("re-adding the same tree: cid %s (want %s), %d new bytes", res.Layer.CID, id, res.NewBytes)
	}
	var ls []chunk.Layer
	json.Unmarshal([]byte(mustCLI(t, d, "layers", "--json")), &ls)
	if len(ls) != 2 || ls[0].Name != "web:1" || ls[0].State != chunk.Complete {
		t.Fatalf("layers = %+v", ls)
	}
	if out := mustCLI(t, d, "layers"); !strings.Contains(out, "web:2") || !strings.Contains(out, "complete") {
		t.Fatalf("layers table:\n%s", out)
	}

	out := filepath.Join(t.TempDir(), "out")
	mustCLI(t, d, "checkout", "web:1", out)
	for _, p := range []string{"etc/app.conf", "bin/app", "README"} {
		if testnet.HashFile(t, filepath.Join(src, p)) != testnet.HashFile(t, filepath.Join(out, p)) {
			t.Fatalf("%s differs after checkout", p)
		}
	}
	if target, _ := os.Readlink(filepath.Join(out, "app")); target != "bin/app" {
		t.Fatalf("symlink target %q", target)
	}
	if _, errOut, code := cli(t, d, "checkout", "web:1", out); code == 0 || !strings.Contains(errOut, "not empty") || !strings.Contains(errOut, "--force") {
		t.Fatalf("checkout into non-empty dir: exit %d, %s", code, errOut)
	}
	mustCLI(t, d, "checkout", "web:1", out, "--force")

	var st api.Stats
	json.Unmarshal([]byte(mustCLI(t, d, "stats", "--json")), &st)
	if st.Layers != 2 || st.Chunks == 0 || st.LogicalBytes != ls[0].Size || st.StoredBytes == 0 {
		t.Fatalf("stats = %+v", st)
	}

	mustCLI(t, d, "rm", "web:1")
	var gc api.GCResult
	json.Unmarshal([]byte(mustCLI(t, d, "gc", "--json")), &gc)
	if gc.RemovedChunks != 0 {
		t.Fatalf("gc removed %d chunks still used by web:2", gc.RemovedChunks)
	}
	mustCLI(t, d, "rm", "web:2")
	json.Unmarshal([]byte(mustCLI(t, d, "gc", "--json")), &gc)
	if gc.RemovedChunks == 0 || gc.RemovedManifests != 1 {
		t.Fatalf("gc after removing every layer: %+v", gc)
	}
	if out := mustCLI(t, d, "verify"); !strings.Contains(out, "0 corrupt") {
		t.Fatalf("verify: %s", out)
	}
}

func TestCLIBadInput(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, t.TempDir())
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"add", "Web", dir}, 2, "layer name \"Web\""},
		{[]string{"add", "web:-x", dir}, 2, "layer tag"},
		{[]string{"add", "web", filepath.Join(dir, "missing")}, 1, "no such file"},
		{[]string{"add", "web", dir, "--chunking", "zip"}, 2, "--chunking \"zip\""},
		{[]string{"add", "web", dir, "--chunk-size", "3K"}, 2, "not a power of two"},
		{[]string{"add", "web", dir, "--hash", "md5"}, 2, "hash \"md5\""},
		{[]string{"add", "web"}, 2, "takes a layer name and a path"},
		{[]string{"add", "web", dir, "--nope"}, 2, "unknown flag"},
		{[]string{"checkout", "absent:1", filepath.Join(dir, "o")}, 1, "layer absent:1: not found"},
		{[]string{"rm", "absent:1"}, 1, "not found"},
		{[]string{"daemon", "--log-level", "loud"}, 2, "--log-level"},
	} {
		_, errOut, code := cli(t, d, tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("p2pimg %s: exit %d, stderr %q; want exit %d with %q", strings.Join(tc.args, " "), code, errOut, tc.code, tc.want)
		}
	}
	var ls []chunk.Layer
	json.Unmarshal([]byte(mustCLI(t, d, "layers", "--json")), &ls)
	if len(ls) != 0 {
		t.Fatalf("bad input created layers: %+v", ls)
	}
}

func TestCLIDaemonNotRunning(t *testing.T) {
	t.Parallel()
	_, errOut, code := cli(t, nil, "layers")
	if code != 1 || !strings.Contains(errOut, "not running") || !strings.Contains(errOut, "p2pimg daemon --data") {
		t.Fatalf("exit %d, %q", code, errOut)
	}
}

func TestSecondDaemonOnSameDataRefused(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	startDaemon(t, data)
	if _, err := testnet.StartDaemon(context.Background(), bin, data); err == nil || !strings.Contains(err.Error(), "already serving") {
		t.Fatalf("second daemon: %v", err)
	}
}

// Kill -9 the daemon in the middle of an add: after a restart, the layer
// completed before is intact, nothing of the interrupted add is visible,
// verify finds nothing corrupt, and the add succeeds when run again.
func TestCrashDuringAdd(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	d := startDaemon(t, data)
	src := t.TempDir()
	writeTree(t, src)
	first := strings.TrimSpace(mustCLI(t, d, "add", "before:1", src))

	img := filepath.Join(t.TempDir(), "disk.raw")
	f, _ := os.Create(img)
	if err := refimage.Write(f, 384<<20, 5); err != nil {
		t.Fatal(err)
	}
	f.Close()
	var killed atomic.Bool
	_, err := d.Client.Add(context.Background(), api.AddRequest{Name: "big:1", Path: img}, func(ev api.Event) {
		if ev.Progress != nil && ev.Progress.Done > ev.Progress.Total/4 && killed.CompareAndSwap(false, true) {
			d.Kill()
		}
	})
	if err == nil || !killed.Load() {
		t.Fatalf("the add finished before the daemon was killed (err %v)", err)
	}

	d = startDaemon(t, data)
	var ls []chunk.Layer
	json.Unmarshal([]byte(mustCLI(t, d, "layers", "--json")), &ls)
	if len(ls) != 1 || ls[0].Name != "before:1" || ls[0].CID != first || ls[0].State != chunk.Complete {
		t.Fatalf("after the crash: layers %+v", ls)
	}
	if out := mustCLI(t, d, "verify"); !strings.Contains(out, " 0 corrupt") {
		t.Fatalf("verify after crash: %s", out)
	}
	out := filepath.Join(t.TempDir(), "o")
	mustCLI(t, d, "checkout", "before:1", out)
	if testnet.HashFile(t, filepath.Join(src, "bin/app")) != testnet.HashFile(t, filepath.Join(out, "bin/app")) {
		t.Fatal("layer completed before the crash differs")
	}
	var res api.AddResult
	json.Unmarshal([]byte(mustCLI(t, d, "add", "big:1", img, "--json")), &res)
	if res.Layer.State != chunk.Complete || res.NewBytes >= res.Layer.Size {
		t.Fatalf("add after crash: %+v (chunks stored before the crash should be reused)", res)
	}
	mustCLI(t, d, "checkout", "big:1", filepath.Join(t.TempDir(), "big"))
}

// Bytes flipped in a pack on disk: verify finds and removes the chunk, the
// layer becomes incomplete, and checkout refuses it rather than write bad data.
func TestCorruptStore(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	d := startDaemon(t, data)
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "blob"), bytes.Repeat([]byte("0123456789abcdef"), 1<<16), 0o644) // 1 MiB, compressible but not zero
	mustCLI(t, d, "add", "blob:1", src)
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	packs, _ := filepath.Glob(filepath.Join(data, "store", "packs", "*.pack"))
	pf, err := os.OpenFile(packs[0], os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := pf.Stat()
	pf.WriteAt([]byte("CORRUPT"), fi.Size()/2)
	pf.Close()

	d = startDaemon(t, data)
	out, _, code := cli(t, d, "verify")
	if code != 1 || !strings.Contains(out, "removed corrupt chunk") || !strings.Contains(out, "blob:1 is now incomplete") {
		t.Fatalf("verify: exit %d\n%s", code, out)
	}
	if _, errOut, code := cli(t, d, "checkout", "blob:1", filepath.Join(t.TempDir(), "o")); code == 0 || !strings.Contains(errOut, "incomplete") {
		t.Fatalf("checkout of a corrupted layer: exit %d %s", code, errOut)
	}
	if out := mustCLI(t, d, "verify"); !strings.Contains(out, " 0 corrupt") {
		t.Fatalf("second verify: %s", out)
	}
}

// An add too large for the disk is refused before it writes, naming the
// bytes it needs, the bytes free and the directory; complete layers stay
// intact, and the add works once space returns. (A write that still meets
// ENOSPC leaves nothing half-written: badgerstore's tests.)
// Needs root (it mounts a small tmpfs as the data directory).
func TestDiskFullDuringAdd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	t.Parallel()
	data := filepath.Join(t.TempDir(), "data")
	os.MkdirAll(data, 0o700)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", data).CombinedOutput(); err != nil {
		t.Skipf("cannot mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", data).Run() })
	d := startDaemon(t, data, "--disk-reserve", "8MiB")
	src := t.TempDir()
	writeTree(t, src)
	mustCLI(t, d, "add", "small:1", src)

	img := filepath.Join(t.TempDir(), "big.raw")
	f, _ := os.Create(img)
	refimage.Write(f, 96<<20, 9)
	f.Close()
	// Refused before anything is written, with the figures and the place.
	_, errOut, code := cli(t, d, "add", "big:1", img)
	if code != 1 || !strings.Contains(errOut, "not enough free space on "+filepath.Join(data, "store")) ||
		!strings.Contains(errOut, "needs 102 MiB (106954752 bytes) plus a reserve of 8.0 MiB") || !strings.Contains(errOut, "bytes) free") {
		t.Fatalf("add on a full disk: exit %d, %s", code, errOut)
	}
	t.Logf("refused: %s", errOut)
	// A directory counts its regular files (two sparse 40 MiB files: 80
	// MiB of apparent size, plus 1/16).
	dir := t.TempDir()
	for _, n := range []string{"a", "b"} {
		os.WriteFile(filepath.Join(dir, n), nil, 0o644)
		os.Truncate(filepath.Join(dir, n), 40<<20)
	}
	if _, errOut, code := cli(t, d, "add", "dir:1", dir); code != 1 || !strings.Contains(errOut, "needs 85 MiB (89128960 bytes)") {
		t.Fatalf("add of a directory too large: exit %d, %s", code, errOut)
	}
	var ls []chunk.Layer
	json.Unmarshal([]byte(mustCLI(t, d, "layers", "--json")), &ls)
	if len(ls) != 1 || ls[0].Name != "small:1" {
		t.Fatalf("layers after a failed add: %+v", ls)
	}
	if out := mustCLI(t, d, "verify"); !strings.Contains(out, " 0 corrupt") {
		t.Fatalf("verify after disk full: %s", out)
	}
	mustCLI(t, d, "checkout", "small:1", filepath.Join(t.TempDir(), "o"))

	// Space comes back: the add goes through.
	if out, err := exec.Command("mount", "-o", "remount,size=256m", data).CombinedOutput(); err != nil {
		t.Fatalf("grow tmpfs: %v %s", err, out)
	}
	mustCLI(t, d, "add", "big:1", img)
	out := filepath.Join(t.TempDir(), "big")
	mustCLI(t, d, "checkout", "big:1", out)
	if testnet.HashFile(t, img) != testnet.HashFile(t, filepath.Join(out, "big.raw")) {
		t.Fatal("image differs after the add that followed a full disk")
	}

	// Dropped, its bytes are dead in the pack: stats says so, and gc gives
	// them back to the file system (df), leaving small:1 whole.
	mustCLI(t, d, "rm", "big:1")
	var st api.Stats
	json.Unmarshal([]byte(mustCLI(t, d, "stats", "--json")), &st)
	if st.DeadBytes < 50<<20 || st.AllocatedBytes < st.DeadBytes {
		t.Fatalf("stats after rm big:1: %+v", st)
	}
	free := func() int64 {
		var fs syscall.Statfs_t
		if err := syscall.Statfs(data, &fs); err != nil {
			t.Fatal(err)
		}
		return int64(fs.Bavail) * fs.Bsize
	}
	before := free()
	var gc api.GCResult
	json.Unmarshal([]byte(mustCLI(t, d, "gc", "--json")), &gc)
	after := free()
	t.Logf("gc: %+v; free %d -> %d", gc, before, after)
	if gc.ReclaimedBytes < st.DeadBytes-1<<20 || after-before < st.DeadBytes-1<<20 {
		t.Fatalf("gc gave back %d bytes (free %d -> %d); %d were dead", gc.ReclaimedBytes, before, after, st.DeadBytes)
	}
	json.Unmarshal([]byte(mustCLI(t, d, "stats", "--json")), &st)
	if st.DeadBytes > 1<<20 {
		t.Fatalf("dead bytes after gc: %+v", st)
	}
	mustCLI(t, d, "checkout", "small:1", filepath.Join(t.TempDir(), "o2"))
}

// Kill -9 a daemon in the middle of a fetch: after a restart the layer is
// incomplete, and fetching again moves exactly the chunks it lacked.
func TestKillDuringFetchResumes(t *testing.T) {
	t.Parallel()
	a, err := testnet.StartDaemon(context.Background(), bin, t.TempDir(), "--max-upload", "40MB", "--announce-interval", "200ms")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Kill)
	img := filepath.Join(t.TempDir(), "disk.raw")
	f, _ := os.Create(img)
	refimage.Write(f, 96<<20, 11)
	f.Close()
	mustCLI(t, a, "add", "vm:1", img, "--chunking", "cdc")
	id, err := a.Client.Identity(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	bdata := t.TempDir()
	peerFlags := []string{"--peer", id.Addrs[0], "--announce-interval", "200ms"}
	b, err := testnet.StartDaemon(context.Background(), bin, bdata, peerFlags...)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "vm:1 in b's catalogue", func() bool {
		cl, err := b.Client.Catalog(context.Background())
		return err == nil && len(cl) == 1
	})
	var killed atomic.Bool
	_, err = b.Client.Fetch(context.Background(), "vm:1", func(ev api.Event) {
		if ev.Progress != nil && ev.Progress.Done > ev.Progress.Total/3 && killed.CompareAndSwap(false, true) {
			b.Kill()
		}
	})
	if err == nil || !killed.Load() {
		t.Fatalf("the fetch finished before the kill (err %v)", err)
	}
	b, err = testnet.StartDaemon(context.Background(), bin, bdata, peerFlags...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Kill)
	var ls []chunk.Layer
	json.Unmarshal([]byte(mustCLI(t, b, "layers", "--json")), &ls)
	if len(ls) != 1 || ls[0].State != chunk.Incomplete {
		t.Fatalf("after the kill: %+v", ls)
	}
	before, _ := b.Client.Stats(context.Background())
	res, err := b.Client.Fetch(context.Background(), "vm:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	total, _ := a.Client.Stats(context.Background())
	if before.StoredBytes == 0 || before.StoredBytes+res.FetchedBytes != total.StoredBytes {
		t.Fatalf("had %d bytes, fetched %d more; the layer's chunks are %d bytes", before.StoredBytes, res.FetchedBytes, total.StoredBytes)
	}
	out := filepath.Join(t.TempDir(), "o")
	mustCLI(t, b, "checkout", "vm:1", out)
	if testnet.HashFile(t, img) != testnet.HashFile(t, filepath.Join(out, "disk.raw")) {
		t.Fatal("resumed fetch differs from the image")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitWithin(t, 20*time.Second, what, cond)
}

// waitWithin waits until cond holds, failing the test after d.
func waitWithin(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(d)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

// The testnet for people: up, kill, restart, partition, heal and down,
// through the CLI, leaving no process or file behind.
func TestTestnetCLI(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "tn")
	tn := func(args ...string) string {
		t.Helper()
		return mustCLI(t, nil, append([]string{"--testnet-dir", dir}, args...)...)
	}
	tn("testnet", "up", "-n", "3")
	l, err := testnet.OpenLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Down(context.Background(), true) })
	status := func() []testnet.NodeStatus {
		var st []testnet.NodeStatus
		if err := json.Unmarshal([]byte(tn("testnet", "status", "--json")), &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	peersAre := func(want ...int) func() bool {
		return func() bool {
			st := status()
			for i, s := range st {
				if s.Peers != want[i] {
					return false
				}
			}
			return true
		}
	}
	waitFor(t, "a full mesh", peersAre(2, 2, 2))
	if out := tn("--node", "2", "id"); !strings.Contains(out, l.Nodes[1].PeerID) {
		t.Fatalf("--node 2 reached another node: %s", out)
	}
	if env := tn("testnet", "env", "3"); env != "export P2PIMG_SOCKET="+l.Nodes[2].Socket+" P2PIMG_OPERATOR_KEY="+testnet.OperatorKey(dir)+"\n" {
		t.Fatalf("env 3 = %q", env)
	}

	// Activation across the three daemon processes, followed with --wait.
	src := t.TempDir()
	writeTree(t, src)
	tn("--node", "1", "add", "web:1", src)
	waitCatalogCLI(t, dir, 3, "web:1")
	waitCatalogCLI(t, dir, 2, "web:1") // the node the activation is published from
	if out := tn("--node", "2", "activate", "web:1", "--at", "/opt/web", "--hosts", "all", "--wait"); !strings.Contains(out, "settled on all 3 host(s)") {
		t.Fatalf("activate --wait: %s", out)
	}
	for _, nd := range l.Nodes {
		if b, err := os.ReadFile(filepath.Join(nd.Root(), "opt", "web", "etc", "app.conf")); err != nil || string(b) != "port=80\n" {
			t.Fatalf("node %d: /opt/web/etc/app.conf = %q, %v", nd.Index, b, err)
		}
	}
	statusCLI(t, dir)
	tn("--node", "3", "deactivate", "web:1", "--wait")
	for _, nd := range l.Nodes {
		if _, err := os.Lstat(filepath.Join(nd.Root(), "opt", "web")); !os.IsNotExist(err) {
			t.Fatalf("node %d: /opt/web after deactivation: %v", nd.Index, err)
		}
	}
	if _, errOut, code := cli(t, nil, "--testnet-dir", dir, "--node", "1", "activate", "web:1", "--at", "relative"); code != 2 || !strings.Contains(errOut, "--at must be an absolute path") {
		t.Fatalf("activate with a relative path: %d %s", code, errOut)
	}

	tn("testnet", "kill", "2")
	if st := status(); st[1].Up || !st[0].Up || !st[2].Up {
		t.Fatalf("after kill 2: %+v", st)
	}
	waitFor(t, "the others to drop node 2", peersAre(1, 0, 1))
	tn("testnet", "restart", "2")
	waitFor(t, "node 2 back in the mesh", peersAre(2, 2, 2))

	tn("testnet", "partition", "1", "2,3")
	waitFor(t, "node 1 cut off from 2 and 3", peersAre(0, 1, 1))
	tn("testnet", "heal")
	waitFor(t, "the mesh healed", peersAre(2, 2, 2))

	// down also undoes what is still active (an overlay mount when root).
	tn("--node", "1", "activate", "web:1", "--at", "/opt/web", "--hosts", "all", "--wait")
	tn("testnet", "kill", "3") // down copes with a dead node
	tn("testnet", "down")
	if m := expose.MountsUnder(dir); len(m) > 0 {
		t.Fatalf("down left mounts behind: %v", m)
	}
	for _, nd := range l.Nodes {
		if err := syscall.Kill(nd.PID, 0); err == nil {
			if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", nd.PID)); !strings.Contains(string(b), ") Z ") {
				t.Errorf("node %d (pid %d) still runs after down", nd.Index, nd.PID)
			}
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("down left %s behind", dir)
	}
	if _, errOut, code := cli(t, nil, "--testnet-dir", dir, "testnet", "status"); code != 1 || !strings.Contains(errOut, "no testnet") {
		t.Fatalf("status after down: %d %s", code, errOut)
	}
}

// The daemon takes its settings from a config file; bad ones are named.
func TestDaemonConfigFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	conf := filepath.Join(dir, "daemon.toml")
	data := filepath.Join(dir, "data")
	os.WriteFile(conf, []byte(fmt.Sprintf("data = %q\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nno-mdns = true\nmax-upload = \"10MB\"\nannounce-interval = \"2s\"\n", data)), 0o600)
	d, err := testnet.StartDaemon(context.Background(), bin, filepath.Join(dir, "ignored"), "--config", conf)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Kill()
	st, err := d.Client.Status(context.Background())
	if err != nil || st.DataDir == data {
		// --data on the command line (from StartDaemon) wins over the file.
		t.Fatalf("status %+v, %v", st, err)
	}
	// With only --config, the file's settings are the daemon's.
	sock := filepath.Join(dir, "from-file.sock")
	os.WriteFile(conf, []byte(fmt.Sprintf("data = %q\nsocket = %q\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nno-mdns = true\nopen = true\n", data, sock)), 0o600)
	cmd := exec.Command(bin, "daemon", "--config", conf)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	fromFile := client.New(sock)
	waitFor(t, "the daemon configured by file", func() bool {
		st, err := fromFile.Status(context.Background())
		return err == nil && st.State == "ready" && st.DataDir == data
	})
	for _, tc := range []struct{ body, want string }{
		{"colour = \"blue\"\n", `unknown setting "colour"`},
		{"max-upload = \"lots\"\n", "--max-upload"},
		{"announce-interval = \"soon\"\n", "announce-interval"},
		{"data = \n", "config file"},
	} {
		os.WriteFile(conf, []byte(tc.body), 0o600)
		_, errOut, code := cli(t, nil, "daemon", "--config", conf, "--data", filepath.Join(dir, "x"))
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("config %q: exit %d, %q; want %q", tc.body, code, errOut, tc.want)
		}
	}
}

// --netns puts each daemon in its own network namespace behind a shaped
// link; down removes the namespaces too. Needs root.
func TestTestnetNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	probe := "p2pimg-probe-" + strconv.Itoa(os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
		t.Skipf("cannot make network namespaces here: %v %s", err, out)
	}
	exec.Command("ip", "netns", "del", probe).Run()
	dir := filepath.Join(t.TempDir(), "tn")
	tn := func(args ...string) string {
		t.Helper()
		return mustCLI(t, nil, append([]string{"--testnet-dir", dir}, args...)...)
	}
	tn("testnet", "up", "-n", "2", "--netns", "--rate", "200mbit")
	l, err := testnet.OpenLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Down(context.Background(), true) })
	src := t.TempDir()
	writeTree(t, src)
	tn("--node", "1", "add", "web:1", src)
	waitCatalogCLI(t, dir, 2, "web:1")
	tn("--node", "2", "fetch", "web:1")
	var ps []api.Peer
	json.Unmarshal([]byte(tn("--node", "2", "peers", "--json")), &ps)
	if len(ps) != 1 || !strings.Contains(strings.Join(ps[0].Addrs, " "), "/ip4/10.234.78.1/") {
		t.Fatalf("node 2 should reach node 1 over its namespace link: %+v", ps)
	}
	// A partition in namespaces cuts the network itself: blackhole routes.
	tn("testnet", "partition", "1", "2")
	if out, _ := exec.Command("ip", "-n", l.NetNS.NS(1), "route", "show", "type", "blackhole").CombinedOutput(); !strings.Contains(string(out), l.NetNS.Addr(0)) {
		t.Fatalf("no blackhole route to node 1 in node 2's namespace: %s", out)
	}
	waitFor(t, "node 2 cut off", func() bool {
		json.Unmarshal([]byte(tn("--node", "2", "peers", "--json")), &ps)
		return len(ps) == 0
	})
	tn("testnet", "heal")
	waitFor(t, "node 2 reconnected", func() bool {
		json.Unmarshal([]byte(tn("--node", "2", "peers", "--json")), &ps)
		return len(ps) == 1
	})
	tn("testnet", "down")
	if l.NetNS.Exists() {
		t.Fatal("down left network namespaces behind")
	}
}

func TestCLICommon(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, t.TempDir())
	a, b := t.TempDir(), t.TempDir()
	for _, dir := range []string{a, b} {
		writeTree(t, dir) // etc/app.conf, bin/app, README, app -> bin/app
	}
	os.WriteFile(filepath.Join(b, "README"), []byte("changed"), 0o644)
	os.WriteFile(filepath.Join(b, "extra"), bytes.Repeat([]byte("e"), 5000), 0o644)
	same := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, p := range []string{"etc/app.conf", "bin/app"} {
		for _, dir := range []string{a, b} {
			os.Chtimes(filepath.Join(dir, p), same, same)
		}
	}
	mustCLI(t, d, "add", "img-a:1", a)
	mustCLI(t, d, "add", "img-b:1", b)
	var r api.CommonResult
	if err := json.Unmarshal([]byte(mustCLI(t, d, "common", "img-a:1", "img-b:1", "--json")), &r); err != nil {
		t.Fatal(err)
	}
	// etc/app.conf (8 bytes) and bin/app (300000 bytes) are identical.
	if r.Files != 2 || r.FileBytes != 300008 || r.ChunkBytes < 300000 {
		t.Fatalf("common: %+v", r)
	}
	if out := mustCLI(t, d, "common", "img-a:1", "img-b:1"); !strings.Contains(out, "2 files") {
		t.Fatalf("common table:\n%s", out)
	}
	if _, errOut, code := cli(t, d, "common", "img-a:1"); code != 2 || !strings.Contains(errOut, "takes two or more layer names") {
		t.Fatalf("common with one layer: %d %s", code, errOut)
	}
	// Split them: the common layer holds the two identical files, and each
	// image still checks out as before.
	if out := mustCLI(t, d, "split", "img-a:1", "img-b:1", "--common", "base:1"); !strings.Contains(out, "common layer base:1") {
		t.Fatalf("split:\n%s", out)
	}
	for name, src := range map[string]string{"img-a:1": a, "img-b:1": b} {
		out := filepath.Join(t.TempDir(), "out")
		mustCLI(t, d, "checkout", name, out)
		for _, p := range []string{"etc/app.conf", "bin/app", "README"} {
			if testnet.HashFile(t, filepath.Join(src, p)) != testnet.HashFile(t, filepath.Join(out, p)) {
				t.Fatalf("%s after split: %s differs", name, p)
			}
		}
	}
	if _, errOut, code := cli(t, d, "split", "img-a:1", "img-b:1"); code != 2 || !strings.Contains(errOut, "--common") {
		t.Fatalf("split without --common: %d %s", code, errOut)
	}
}

// waitCatalogCLI waits until testnet node k's `layers --all` lists layer.
func waitCatalogCLI(t *testing.T, dir string, k int, layer string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%s in node %d's catalogue", layer, k), func() bool {
		out, _, code := cli(t, nil, "--testnet-dir", dir, "--node", strconv.Itoa(k), "layers", "--all")
		return code == 0 && strings.Contains(out, layer)
	})
}

// The API socket is the daemon user's alone, unless a group is named; an
// unknown group is refused at start.
func TestSocketAccess(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, t.TempDir())
	fi, err := os.Stat(d.Client.Socket())
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	if _, errOut, code := cli(t, nil, "daemon", "--data", t.TempDir(), "--open", "--socket-group", "no-such-group-p2pimg"); code == 0 || !strings.Contains(errOut, "no-such-group-p2pimg") {
		t.Fatalf("unknown socket group: %d %s", code, errOut)
	}
	g, err := user.LookupGroup("daemon")
	if err != nil || os.Geteuid() != 0 {
		t.Skip("needs root and a group named daemon")
	}
	gd := startDaemon(t, t.TempDir(), "--socket-group", "daemon")
	fi, err = os.Stat(gd.Client.Socket())
	if err != nil || fi.Mode().Perm() != 0o660 || strconv.Itoa(int(fi.Sys().(*syscall.Stat_t).Gid)) != g.Gid {
		t.Fatalf("socket with a group: mode %v gid %v (%v)", fi.Mode().Perm(), fi.Sys().(*syscall.Stat_t).Gid, err)
	}
}

// A fetch whose missing chunks do not fit is refused before it writes,
// with the figures, and leaves the store consistent; once there is room again the same fetch resumes and
// completes, byte-identical.
func TestDiskFullDuringFetch(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	t.Parallel()
	a := startDaemon(t, t.TempDir())
	img := filepath.Join(t.TempDir(), "big.raw")
	f, _ := os.Create(img)
	refimage.Write(f, 96<<20, 4)
	f.Close()
	mustCLI(t, a, "add", "big:1", img, "--chunking", "cdc")
	id, err := a.Client.Identity(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(t.TempDir(), "data")
	os.MkdirAll(data, 0o700)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", data).CombinedOutput(); err != nil {
		t.Skipf("cannot mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", data).Run() })
	b := startDaemon(t, data, "--peer", id.Addrs[0])
	waitFor(t, "node b hears of big:1", func() bool {
		out, _, _ := cli(t, b, "layers", "--all")
		return strings.Contains(out, "big:1")
	})
	_, errOut, code := cli(t, b, "fetch", "big:1")
	if code != 1 || !strings.Contains(errOut, "not enough free space on "+filepath.Join(data, "store")) || !strings.Contains(errOut, "bytes) free") {
		t.Fatalf("fetch onto a full disk: exit %d, %s", code, errOut)
	}
	t.Logf("refused: %s", errOut)
	if out := mustCLI(t, b, "verify"); !strings.Contains(out, " 0 corrupt") {
		t.Fatalf("store after a failed fetch: %s", out)
	}
	if out, err := exec.Command("mount", "-o", "remount,size=256m", data).CombinedOutput(); err != nil {
		t.Fatalf("grow tmpfs: %v %s", err, out)
	}
	if out := mustCLI(t, b, "fetch", "big:1"); !strings.Contains(out, "complete") {
		t.Fatalf("fetch after space returned: %s", out)
	}
	out := filepath.Join(t.TempDir(), "out")
	mustCLI(t, b, "checkout", "big:1", out)
	if testnet.HashFile(t, img) != testnet.HashFile(t, filepath.Join(out, "big.raw")) {
		t.Fatal("the resumed fetch is not byte-identical")
	}
}

// --psk and --members on the command line: hosts with the key and on the
// list replicate; a host with another key, or with the key but not on the
// list, is refused (its dial fails) and never becomes a peer. Malformed
// files stop the daemon with the flag named.
func TestPSKAndMembersFlags(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	datas := map[string]string{}
	ids := map[string]string{}
	for _, h := range []string{"a", "b", "c", "d"} {
		datas[h] = filepath.Join(dir, h)
		ids[h] = strings.TrimSpace(mustCLI(t, nil, "identity", "--data", datas[h]))
	}
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o600)
		return p
	}
	key := write("swarm.key", "/key/swarm/psk/1.0.0/\n/base16/\n"+strings.Repeat("ab", 32)+"\n")
	other := write("other.key", strings.Repeat("cd", 32)+"\n")
	members := write("members", "# the cluster\n"+ids["a"]+"\n\n"+ids["b"]+" # host b\n"+ids["c"]+"\n")
	start := func(h string, extra ...string) *testnet.Daemon {
		d, err := testnet.StartDaemon(context.Background(), bin, datas[h], append([]string{"--announce-interval", "200ms"}, extra...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.Kill)
		return d
	}
	a := start("a", "--psk", key, "--members", members)
	id, err := a.Client.Identity(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "disk.raw")
	os.WriteFile(img, bytes.Repeat([]byte("p2pimg"), 100000), 0o600)
	mustCLI(t, a, "add", "vm:1", img)
	b := start("b", "--psk", key, "--members", members, "--peer", id.Addrs[0])
	c := start("c", "--psk", other, "--members", members, "--peer", id.Addrs[0]) // a member with another key
	d := start("d", "--psk", key, "--peer", id.Addrs[0])                         // the key, not a member
	waitFor(t, "vm:1 in b's catalogue", func() bool {
		cl, err := b.Client.Catalog(context.Background())
		return err == nil && len(cl) == 1
	})
	logHas := func(d *testnet.Daemon, what string) func() bool {
		return func() bool {
			log, _ := os.ReadFile(filepath.Join(d.Data, "daemon.log"))
			return bytes.Contains(log, []byte(what))
		}
	}
	// c's handshake fails on the key; d's completes, and a's gater refuses it.
	waitFor(t, "c's dial to fail", logHas(c, "peer not reachable"))
	waitFor(t, "a to refuse d", logHas(a, `not a cluster member" peer=`+ids["d"]))
	for _, h := range []*testnet.Daemon{c, d} {
		if cl, _ := h.Client.Catalog(context.Background()); len(cl) != 0 {
			t.Errorf("%s got the cluster's catalogue: %+v", h.Data, cl)
		}
	}
	ps, err := a.Client.Peers(context.Background())
	if err != nil || len(ps) != 1 || ps[0].PeerID != ids["b"] {
		t.Fatalf("a's peers: %+v, %v; want only b", ps, err)
	}
	for _, tc := range []struct {
		flags []string
		want  string
	}{
		{[]string{"--psk", filepath.Join(dir, "absent")}, "--psk"},
		{[]string{"--psk", write("short.key", "abcd\n")}, "64 hex digits"},
		{[]string{"--psk", write("bad.key", "/key/swarm/psk/1.0.0/\n/base99/\nzz\n")}, "--psk"},
		{[]string{"--members", write("bad-members", ids["a"]+"\nnot-a-peer\n")}, `line 2: "not-a-peer"`},
		{[]string{"--members", write("empty-members", "# nobody\n")}, "no peer id"},
	} {
		_, errOut, code := cli(t, nil, append([]string{"daemon", "--data", filepath.Join(dir, "x")}, tc.flags...)...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("daemon %v: exit %d, %q; want exit 2 and %q", tc.flags, code, errOut, tc.want)
		}
	}
}
