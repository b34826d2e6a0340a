package testnet_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"

	"github.com/p2pimg/p2pimg/node"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/node/expose"
	"github.com/p2pimg/p2pimg/node/expose/fuseview"
	"github.com/p2pimg/p2pimg/node/gossip"
	"github.com/p2pimg/p2pimg/testnet"
)

// opNet is a testnet whose cluster obeys one operator key; node i carries
// the label node=i.
func opNet(t *testing.T, n int, mode ...api.Mode) (*testnet.Net, crypto.PrivKey) {
	t.Helper()
	kf := filepath.Join(t.TempDir(), "op.key")
	id, err := cluster.NewKeyFile(kf)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := cluster.LoadKeyFile(kf)
	c, err := cluster.New("test", nil, []string{id.String()})
	if err != nil {
		t.Fatal(err)
	}
	net := testnet.New(t, n, testnet.WithCluster(c), testnet.WithConfig(func(i int, cfg *node.Config) {
		cfg.Labels = map[string]string{"node": string(rune('0' + i))}
		if len(mode) > 0 {
			cfg.Expose = mode[0]
		}
	}))
	return net, key
}

// act signs and publishes an activation through node via's API.
func act(t *testing.T, key crypto.PrivKey, via *testnet.Node, layer, at, hosts string, op api.Op, maps ...string) api.ActivateResult {
	t.Helper()
	id, err := via.Client.Resolve(ctx, layer)
	if err != nil {
		t.Fatal(err)
	}
	a, err := gossip.SignActivation(key, gossip.Activation{Layer: layer, CID: id, At: at, Hosts: hosts, Maps: maps, Op: op, Time: time.Now().UnixNano()})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(a)
	res, err := via.Client.Activate(ctx, api.ActivateRequest{Signed: b})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// settled waits until every host in hosts reports state for the activation.
func settled(t *testing.T, net *testnet.Net, res api.ActivateResult, layer string, state api.State, hosts ...*testnet.Node) {
	t.Helper()
	net.Eventually(20*time.Second, layer+" "+string(state)+" on the selected hosts", func() bool {
		for _, h := range hosts {
			sts, err := h.Client.Activations(ctx)
			if err != nil {
				return false
			}
			ok := false
			for _, s := range sts {
				if s.Host == h.Node().ID().String() && s.Layer == layer && s.Time == res.Time && s.State == state {
					ok = true
				}
			}
			if !ok {
				return false
			}
		}
		return true
	})
}

func tree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for p, body := range files {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, p), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func readAt(nd *testnet.Node, p string) string {
	b, err := os.ReadFile(filepath.Join(nd.Data, "root", p))
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return string(b)
}

func TestActivateAllAndDeactivateRestores(t *testing.T) {
	for _, mode := range []api.Mode{api.ModeMaterialized, api.ModeOverlay, api.ModeFUSE} {
		t.Run(string(mode), func(t *testing.T) {
			if mode.Overlaid() {
				if err := expose.OverlayWorks(t.TempDir()); err != nil {
					t.Skipf("overlay mounts unavailable here: %v", err)
				}
			}
			if mode == api.ModeFUSE {
				if err := fuseview.Works(t.TempDir()); err != nil {
					t.Skipf("FUSE unavailable here: %v", err)
				}
			}
			activateAllAndDeactivate(t, mode)
		})
	}
}

func activateAllAndDeactivate(t *testing.T, mode api.Mode) {
	net, key := opNet(t, 3, mode)
	src := tree(t, map[string]string{"etc/app.conf": "port=80\n", "bin/app": "v1"})
	add(t, net.Nodes[0], "app:1", src)
	waitCatalog(t, net, net.Nodes[2], "app:1", mustResolve(t, net.Nodes[0], "app:1"))
	// Node 1 had something of its own at /opt/app.
	prev := filepath.Join(net.Nodes[1].Data, "root", "opt", "app", "local.txt")
	os.MkdirAll(filepath.Dir(prev), 0o755)
	os.WriteFile(prev, []byte("mine"), 0o600)
	// ... and an /etc/app.conf of its own, which the layer's replaces while active.
	orig := filepath.Join(net.Nodes[1].Data, "root", "etc", "app.conf")
	os.MkdirAll(filepath.Dir(orig), 0o755)
	os.WriteFile(orig, []byte("port=22\n"), 0o644)

	res := act(t, key, net.Nodes[2], "app:1", "/opt/app", "all", api.OpActivate, "/etc/app.conf=etc/app.conf")
	if len(res.Targets) != 3 {
		t.Fatalf("activation selects %d hosts, want 3", len(res.Targets))
	}
	settled(t, net, res, "app:1", api.StateActive, net.Nodes...)
	for _, nd := range net.Nodes {
		if got := readAt(nd, "opt/app/etc/app.conf"); got != "port=80\n" {
			t.Fatalf("node %d: /opt/app/etc/app.conf = %q", nd.Index, got)
		}
		path := filepath.Join(nd.Data, "root", "opt", "app")
		if expose.Mounted(path) != mode.Overlaid() {
			t.Fatalf("node %d: %s mounted=%v in %s mode", nd.Index, path, expose.Mounted(path), mode)
		}
	}
	for _, nd := range net.Nodes { // the mapped path resolves into the layer
		if got := readAt(nd, "etc/app.conf"); got != "port=80\n" {
			t.Fatalf("node %d: mapped /etc/app.conf = %q", nd.Index, got)
		}
	}
	sts, _ := net.Nodes[0].Client.Activations(ctx)
	for _, s := range sts {
		if s.Mode != mode {
			t.Fatalf("host %s reports mode %q, want %q", s.Host, s.Mode, mode)
		}
	}
	if mode.Overlaid() { // node 1's own files show through, under the layer
		if got := readAt(net.Nodes[1], "opt/app/local.txt"); got != "mine" {
			t.Fatalf("overlay hides node 1's own file: %q", got)
		}
		// A mount lost behind the daemon's back (a reboot) is made again,
		// with what was written into it.
		path := filepath.Join(net.Nodes[0].Data, "root", "opt", "app")
		written := filepath.Join(path, "written.txt")
		if err := os.WriteFile(written, []byte("kept"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Unmount(path, 0); err != nil {
			t.Fatal(err)
		}
		net.Eventually(10*time.Second, "the overlay mounted again", func() bool { return expose.Mounted(path) })
		if b, err := os.ReadFile(written); err != nil || string(b) != "kept" {
			t.Fatalf("a file written into the view, after its overlay was mounted again: %q, %v", b, err)
		}
		if err := os.Remove(written); err != nil { // so that deactivation is not refused
			t.Fatal(err)
		}
	}
	if mode == api.ModeOverlay { // its checkout is counted while active
		if st, err := net.Nodes[0].Client.Stats(ctx); err != nil || st.ViewBytes == 0 {
			t.Fatalf("stats while an overlay view is checked out: %+v, %v", st, err)
		}
	}
	res = act(t, key, net.Nodes[0], "app:1", "", "all", api.OpDeactivate)
	settled(t, net, res, "app:1", api.StateInactive, net.Nodes...)
	for _, nd := range net.Nodes { // no view checkout outlives the activation
		if ents, _ := os.ReadDir(filepath.Join(nd.Data, "views")); len(ents) > 0 {
			t.Fatalf("node %d: views/ after deactivation: %v", nd.Index, ents)
		}
	}
	// One left behind (by an older build, say) is reclaimed by gc.
	stray := filepath.Join(net.Nodes[0].Data, "views", "stray", "tree")
	os.MkdirAll(stray, 0o755)
	os.WriteFile(filepath.Join(stray, "f"), make([]byte, 1<<20), 0o644)
	if gc, err := net.Nodes[0].Client.GC(ctx); err != nil || gc.RemovedViews != 1 || gc.RemovedViewBytes < 1<<20 {
		t.Fatalf("gc of a stray view checkout: %+v, %v", gc, err)
	}
	if got := readAt(net.Nodes[1], "opt/app/local.txt"); got != "mine" {
		t.Fatalf("node 1's own /opt/app was not restored: %q", got)
	}
	if got := readAt(net.Nodes[1], "etc/app.conf"); got != "port=22\n" {
		t.Fatalf("node 1's own /etc/app.conf was not restored: %q", got)
	}
	if _, err := os.Lstat(filepath.Join(net.Nodes[0].Data, "root", "etc", "app.conf")); !os.IsNotExist(err) {
		t.Fatalf("node 0: the mapped path outlived the activation (%v)", err)
	}
	for _, nd := range []*testnet.Node{net.Nodes[0], net.Nodes[2]} {
		if _, err := os.Lstat(filepath.Join(nd.Data, "root", "opt", "app")); !os.IsNotExist(err) {
			t.Fatalf("node %d: /opt/app still there after deactivation (%v)", nd.Index, err)
		}
	}
}

func mustResolve(t *testing.T, nd *testnet.Node, name string) string {
	t.Helper()
	id, err := nd.Client.Resolve(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestActivateByIDAndLabel(t *testing.T) {
	net, key := opNet(t, 3)
	add(t, net.Nodes[0], "app:1", tree(t, map[string]string{"f": "x"}))
	waitCatalog(t, net, net.Nodes[1], "app:1", mustResolve(t, net.Nodes[0], "app:1"))
	res := act(t, key, net.Nodes[0], "app:1", "/srv/a", net.Nodes[1].Node().ID().String(), api.OpActivate)
	settled(t, net, res, "app:1", api.StateActive, net.Nodes[1])
	res = act(t, key, net.Nodes[0], "app:1", "/srv/b", "node=2", api.OpActivate)
	settled(t, net, res, "app:1", api.StateActive, net.Nodes[2])
	if readAt(net.Nodes[1], "srv/a/f") != "x" || readAt(net.Nodes[2], "srv/b/f") != "x" {
		t.Fatal("the selected hosts do not show the layer")
	}
	for _, p := range []string{"srv/a", "srv/b"} {
		if _, err := os.Lstat(filepath.Join(net.Nodes[0].Data, "root", p)); !os.IsNotExist(err) {
			t.Fatalf("node 0 was not selected but has %s", p)
		}
	}
	if _, err := os.Lstat(filepath.Join(net.Nodes[1].Data, "root", "srv", "b")); !os.IsNotExist(err) {
		t.Fatal("node 1 applied the label activation meant for node=2")
	}
}

// An activation signed by a key that is not an operator changes nothing.
func TestForgedActivationRefused(t *testing.T) {
	net, _ := opNet(t, 2)
	add(t, net.Nodes[0], "app:1", tree(t, map[string]string{"f": "x"}))
	forger, _, _ := crypto.GenerateEd25519Key(nil)
	id := mustResolve(t, net.Nodes[0], "app:1")
	a, _ := gossip.SignActivation(forger, gossip.Activation{Layer: "app:1", CID: id, At: "/opt/x", Hosts: "all", Op: api.OpActivate, Time: time.Now().UnixNano()})
	b, _ := json.Marshal(a)
	_, err := net.Nodes[0].Client.Activate(ctx, api.ActivateRequest{Signed: b})
	if err == nil || !strings.Contains(err.Error(), "not an operator") {
		t.Fatalf("forged activation: %v", err)
	}
	// Without a key a host may act on itself only.
	if _, err := net.Nodes[0].Client.Activate(ctx, api.ActivateRequest{Layer: "app:1", At: "/opt/x", Hosts: "all", Op: api.OpActivate}); err == nil {
		t.Fatal("an unsigned activation of every host was accepted")
	}
	sts, _ := net.Nodes[1].Client.Activations(ctx)
	if len(sts) != 0 {
		t.Fatalf("states after refused activations: %+v", sts)
	}
}

// A host that was down when the activation went out applies it when it
// comes back; a restarted host keeps its active layer.
func TestOfflineHostConvergesAndRestartKeepsActive(t *testing.T) {
	net, key := opNet(t, 3)
	add(t, net.Nodes[0], "app:1", tree(t, map[string]string{"f": "x"}))
	waitCatalog(t, net, net.Nodes[1], "app:1", mustResolve(t, net.Nodes[0], "app:1"))
	net.Stop(2)
	res := act(t, key, net.Nodes[0], "app:1", "/opt/app", "all", api.OpActivate)
	settled(t, net, res, "app:1", api.StateActive, net.Nodes[0], net.Nodes[1])
	net.Restart(2)
	settled(t, net, res, "app:1", api.StateActive, net.Nodes[2])
	net.Restart(1)
	settled(t, net, res, "app:1", api.StateActive, net.Nodes[1])
	for _, nd := range net.Nodes {
		if readAt(nd, "opt/app/f") != "x" {
			t.Fatalf("node %d does not show the layer", nd.Index)
		}
	}
}

// Activating a layer whose chunks no reachable peer has: the host reports
// the failure with its reason, and recovers when a peer with them returns.
func TestActivationRecoversWhenChunksAppear(t *testing.T) {
	kf := filepath.Join(t.TempDir(), "op.key")
	id, _ := cluster.NewKeyFile(kf)
	key, _ := cluster.LoadKeyFile(kf)
	c, _ := cluster.New("test", nil, []string{id.String()})
	net := testnet.New(t, 2, testnet.WithCluster(c), testnet.WithStallTimeout(time.Second))
	add(t, net.Nodes[0], "app:1", tree(t, map[string]string{"f": "x"}))
	waitCatalog(t, net, net.Nodes[1], "app:1", mustResolve(t, net.Nodes[0], "app:1"))
	net.Stop(0)
	res := act(t, key, net.Nodes[1], "app:1", "/opt/app", net.Nodes[1].Node().ID().String(), api.OpActivate)
	net.Eventually(20*time.Second, "node 1 reports the failure with a reason", func() bool {
		sts, _ := net.Nodes[1].Client.Activations(ctx)
		for _, s := range sts {
			if s.Layer == "app:1" && s.State == api.StateFailed && strings.Contains(s.Detail, "no connected peer") {
				return true
			}
		}
		return false
	})
	net.Restart(0)
	settled(t, net, res, "app:1", api.StateActive, net.Nodes[1])
	if readAt(net.Nodes[1], "opt/app/f") != "x" {
		t.Fatal("the layer is not exposed after recovering")
	}
}

// A map whose DST is a symlink in the layer leading out of it is refused.
func TestMapCannotEscapeTheLayer(t *testing.T) {
	net, key := opNet(t, 1, api.ModeMaterialized)
	src := tree(t, map[string]string{"f": "x"})
	os.Symlink("/etc", filepath.Join(src, "escape"))
	add(t, net.Nodes[0], "app:1", src)
	res := act(t, key, net.Nodes[0], "app:1", "/opt/app", "all", api.OpActivate, "/etc/passwd=escape/passwd")
	net.Eventually(10*time.Second, "the activation fails naming the escape", func() bool {
		sts, _ := net.Nodes[0].Client.Activations(ctx)
		return len(sts) == 1 && sts[0].Time == res.Time && sts[0].State == api.StateFailed && strings.Contains(sts[0].Detail, "leads outside the layer")
	})
	if _, err := os.Lstat(filepath.Join(net.Nodes[0].Data, "root", "etc", "passwd")); !os.IsNotExist(err) {
		t.Fatalf("something was made at the mapped path: %v", err)
	}
	// It is retried (and fails again); deactivation then leaves nothing at
	// /opt/app, where nothing was before: no retry may pass the host's
	// earlier exposure off as its original contents.
	net.Eventually(15*time.Second, "a retry", func() bool {
		sts, _ := net.Nodes[0].Client.Activations(ctx)
		return len(sts) == 1 && sts[0].State == api.StateFailed && time.Since(time.Unix(0, res.Time)) > 6*time.Second
	})
	res = act(t, key, net.Nodes[0], "app:1", "", "all", api.OpDeactivate)
	settled(t, net, res, "app:1", api.StateInactive, net.Nodes[0])
	for _, p := range []string{"opt/app", "opt/app" + ".p2pimg-base"} {
		if _, err := os.Lstat(filepath.Join(net.Nodes[0].Data, "root", p)); !os.IsNotExist(err) {
			t.Fatalf("%s is there after deactivation (%v)", p, err)
		}
	}
}
