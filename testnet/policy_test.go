package testnet_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/expose"
	"github.com/p2pimg/p2pimg/testnet"
)

func complete(nd *testnet.Node, name string) bool {
	ls, err := nd.Client.Layers(ctx)
	if err != nil {
		return false
	}
	for _, l := range ls {
		if l.Name == name && l.State == chunk.Complete {
			return true
		}
	}
	return false
}

// A layer held on label gpu=true reaches exactly the labelled hosts; a
// labelled host whose policy denies it reports the conflict and fetches
// nothing, and converges once its policy changes.
func TestPolicyHoldAndConflict(t *testing.T) {
	net, key := opNet(t, 4)
	// opNet labels node i with node=i; give nodes 1 and 2 gpu=true through
	// their host config, and node 2 a policy that denies gpu layers.
	net.Stop(1)
	net.Stop(2)
	for _, i := range []int{1, 2} {
		net.Nodes[i].Configure(func(c *node.Config) { c.Labels["gpu"] = "true" })
	}
	net.Nodes[2].Configure(func(c *node.Config) { c.HostPolicy = `deny = ["gpu-*"]` })
	net.Restart(1)
	net.Restart(2)
	net.WaitConnected()

	src := tree(t, map[string]string{"driver.ko": "gpu driver"})
	if _, err := net.Nodes[0].Client.Add(ctx, api.AddRequest{Name: "gpu-drv:1", Path: src, Policy: `hold = "gpu=true"`}, nil); err != nil {
		t.Fatal(err)
	}
	net.Eventually(20*time.Second, "node 1 holds gpu-drv:1 by policy", func() bool { return complete(net.Nodes[1], "gpu-drv:1") })
	net.Eventually(10*time.Second, "node 2 reports the conflict", func() bool {
		cs, err := net.Nodes[3].Client.PolicyCheck(ctx)
		if err != nil || len(cs) != 1 {
			return false
		}
		return cs[0].Host == net.Nodes[2].Node().ID().String() && cs[0].Conflict.LayerRule == "hold=gpu=true" && cs[0].Conflict.HostRule == "deny=gpu-*"
	})
	show, err := net.Nodes[2].Client.PolicyShow(ctx, "gpu-drv:1", "")
	if err != nil || show.Conflict == nil {
		t.Fatalf("policy show on the denying host: %v %+v", err, show)
	}
	if complete(net.Nodes[2], "gpu-drv:1") || complete(net.Nodes[3], "gpu-drv:1") {
		t.Fatal("a host fetched a layer its policy refuses or does not hold")
	}
	if ls, _ := net.Nodes[2].Client.Layers(ctx); len(ls) != 0 {
		t.Fatalf("the denying host fetched something: %+v", ls)
	}
	// An activation there is refused by policy, with the reason.
	res := act(t, key, net.Nodes[0], "gpu-drv:1", "/opt/gpu", net.Nodes[2].Node().ID().String(), api.OpActivate)
	settled(t, net, res, "gpu-drv:1", api.StateFailed, net.Nodes[2])
	sts, _ := net.Nodes[2].Client.Activations(ctx)
	for _, s := range sts {
		if s.Host == net.Nodes[2].Node().ID().String() && s.Layer == "gpu-drv:1" && !strings.Contains(s.Detail, "deny=gpu-*") {
			t.Fatalf("refused activation does not name the rule: %q", s.Detail)
		}
	}
	// The host policy changes: the conflict goes and the host converges.
	if err := net.Nodes[2].Client.SetHostPolicy(ctx, `deny = ["test-*"]`); err != nil {
		t.Fatal(err)
	}
	net.Eventually(20*time.Second, "node 2 holds gpu-drv:1 once allowed", func() bool { return complete(net.Nodes[2], "gpu-drv:1") })
	net.Eventually(10*time.Second, "no conflicts left", func() bool {
		cs, err := net.Nodes[0].Client.PolicyCheck(ctx)
		return err == nil && len(cs) == 0
	})
}

// Mirror mode: a file changed in an exposed view shows in diff, and the
// daemon puts it back.
func TestMirrorModeRestoresDrift(t *testing.T) {
	for _, mode := range []api.Mode{api.ModeMaterialized, api.ModeOverlay} {
		t.Run(string(mode), func(t *testing.T) {
			if mode == api.ModeOverlay && expose.OverlayWorks(t.TempDir()) != nil {
				t.Skip("overlay mounts need root and overlayfs")
			}
			mirrorDrift(t, mode)
		})
	}
}

func mirrorDrift(t *testing.T, mode api.Mode) {
	net, key := opNet(t, 2, mode)
	src := tree(t, map[string]string{"etc/app.conf": "port=80\n", "bin/app": "binary"})
	if _, err := net.Nodes[0].Client.Add(ctx, api.AddRequest{Name: "app:1", Path: src, Policy: `mode = "mirror"`}, nil); err != nil {
		t.Fatal(err)
	}
	waitCatalog(t, net, net.Nodes[1], "app:1", mustResolve(t, net.Nodes[0], "app:1"))
	res := act(t, key, net.Nodes[0], "app:1", "/opt/app", net.Nodes[1].Node().ID().String(), api.OpActivate)
	settled(t, net, res, "app:1", api.StateActive, net.Nodes[1])
	// Asked from the other host (diff --host) ...
	remote := net.Nodes[1].Node().ID().String()
	if d, err := net.Nodes[0].Client.Diff(ctx, "app:1", remote); err != nil || len(d.Changes) != 0 {
		t.Fatalf("fresh view differs: %v %+v", err, d)
	}
	conf := filepath.Join(net.Nodes[1].Data, "root", "opt", "app", "etc", "app.conf")
	seen := false
	for range 10 { // the daemon may restore it before diff looks: drift again
		if err := os.WriteFile(conf, []byte("port=8080\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		d, err := net.Nodes[0].Client.Diff(ctx, "app:1", remote)
		if err != nil {
			t.Fatal(err)
		}
		if len(d.Changes) == 1 && d.Changes[0].Path == "etc/app.conf" && d.Changes[0].Kind == "content" {
			seen = true
			break
		}
	}
	if !seen {
		t.Fatal("diff never showed the drifted file")
	}
	net.Eventually(20*time.Second, "the drifted file restored", func() bool {
		b, _ := os.ReadFile(conf)
		d, err := net.Nodes[1].Client.Diff(ctx, "app:1", "") // ... and on the host itself
		return string(b) == "port=80\n" && err == nil && len(d.Changes) == 0
	})
}

// A layer with min_copies = 2 survives rm and gc on every host while the
// cluster holds only two complete copies.
func TestMinCopiesSurvivesGC(t *testing.T) {
	net, _ := opNet(t, 3)
	src := tree(t, map[string]string{"f": "keep me"})
	if _, err := net.Nodes[0].Client.Add(ctx, api.AddRequest{Name: "keep:1", Path: src, Policy: "hold = \"node=1\"\nmin_copies = 2"}, nil); err != nil {
		t.Fatal(err)
	}
	net.Eventually(20*time.Second, "node 1 holds keep:1", func() bool { return complete(net.Nodes[1], "keep:1") })
	net.Eventually(10*time.Second, "node 0 sees two complete copies", func() bool {
		cl, _ := net.Nodes[0].Client.Catalog(ctx)
		for _, l := range cl {
			if l.Name == "keep:1" {
				n := 0
				for _, s := range l.Holders {
					if s == "complete" {
						n++
					}
				}
				return n >= 2
			}
		}
		return false
	})
	for _, i := range []int{0, 1} {
		err := net.Nodes[i].Client.Remove(ctx, "keep:1")
		if err == nil || !strings.Contains(err.Error(), "rm refused") {
			t.Fatalf("rm on node %d: %v", i, err)
		}
	}
	for _, nd := range net.Nodes {
		if _, err := nd.Client.GC(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, i := range []int{0, 1} {
		if !complete(net.Nodes[i], "keep:1") {
			t.Fatalf("node %d lost keep:1", i)
		}
	}
	if _, err := net.Nodes[1].Client.Verify(ctx, nil); err != nil {
		t.Fatal(err)
	}
	// A third copy may go again.
	if _, err := net.Nodes[2].Client.Fetch(ctx, "keep:1", nil); err != nil {
		t.Fatal(err)
	}
	net.Eventually(10*time.Second, "node 2 sees three copies", func() bool {
		return net.Nodes[2].Client.Remove(ctx, "keep:1") == nil
	})
}

// Locked paths: in a materialized view a change to one is undone (and
// reported) while other local changes stay; in an overlay a write to one
// fails.
func TestLockedPaths(t *testing.T) {
	for _, mode := range []api.Mode{api.ModeMaterialized, api.ModeOverlay} {
		t.Run(string(mode), func(t *testing.T) {
			if mode == api.ModeOverlay && expose.OverlayWorks(t.TempDir()) != nil {
				t.Skip("overlay mounts need root and overlayfs")
			}
			net, key := opNet(t, 2, mode)
			src := tree(t, map[string]string{"etc/app.conf": "port=80\n", "bin/app": "binary"})
			if _, err := net.Nodes[0].Client.Add(ctx, api.AddRequest{Name: "app:1", Path: src, Policy: `locked = ["/etc/app.conf"]`}, nil); err != nil {
				t.Fatal(err)
			}
			waitCatalog(t, net, net.Nodes[1], "app:1", mustResolve(t, net.Nodes[0], "app:1"))
			res := act(t, key, net.Nodes[0], "app:1", "/opt/app", net.Nodes[1].Node().ID().String(), api.OpActivate)
			settled(t, net, res, "app:1", api.StateActive, net.Nodes[1])
			view := filepath.Join(net.Nodes[1].Data, "root", "opt", "app")
			conf, bin := filepath.Join(view, "etc", "app.conf"), filepath.Join(view, "bin", "app")
			if err := os.WriteFile(bin, []byte("patched locally"), 0o644); err != nil {
				t.Fatal(err)
			}
			err := os.WriteFile(conf, []byte("port=8080\n"), 0o644)
			if mode == api.ModeOverlay {
				if err == nil || !strings.Contains(err.Error(), "read-only") {
					t.Fatalf("write to a locked path in an overlay: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			net.Eventually(20*time.Second, "the locked file restored and reported", func() bool {
				b, _ := os.ReadFile(conf)
				sts, _ := net.Nodes[1].Client.Activations(ctx)
				reported := false
				for _, s := range sts {
					reported = reported || (s.Layer == "app:1" && strings.Contains(s.Detail, "etc/app.conf"))
				}
				return string(b) == "port=80\n" && reported
			})
			if b, _ := os.ReadFile(bin); string(b) != "patched locally" {
				t.Fatalf("an unlocked local change was undone: %q", b)
			}
		})
	}
}
