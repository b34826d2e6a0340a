package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/cluster"
)

// cluster reload refuses files that would make the cluster open (no
// members list) on a daemon not started with --open, keeping its members;
// a daemon started --open reloads as an open cluster.
func TestClusterReloadOpenRefused(t *testing.T) {
	t.Parallel()
	m := newMemberNet(t, "a", "b")
	cc, err := cluster.New("lab", []string{m.ids["a"], m.ids["b"]}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cf := filepath.Join(m.dir, "cluster.toml")
	if err := cc.Write(cf); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, m.datas["a"], "--cluster", cf, "--open=false") // startDaemon gives --open; not this one
	open := &cluster.Config{Name: cc.Name, PSK: cc.PSK}                // no members
	os.Remove(cf)
	if err := open.Write(cf); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := cli(t, d, "cluster", "reload")
	if code != 1 || !strings.Contains(errOut, "the files now give no members list (an open cluster): refused, as at start without --open") || !strings.Contains(errOut, "the old config stays") {
		t.Fatalf("reload to an open cluster: exit %d, %q; want exit 1 naming the open cluster", code, errOut)
	}
	var id api.Identity
	if err := json.Unmarshal([]byte(mustCLI(t, d, "--json", "id")), &id); err != nil || id.Open {
		t.Fatalf("after the refused reload: open_cluster %v (%v), want the members list kept", id.Open, err)
	}
	os.Remove(cf)
	if err := cc.Write(cf); err != nil {
		t.Fatal(err)
	}
	var r api.ClusterReload
	if err := json.Unmarshal([]byte(mustCLI(t, d, "--json", "cluster", "reload")), &r); err != nil || r.Members != 2 {
		t.Fatalf("reload of the members again: %+v %v; want 2 members", r, err)
	}

	// Started --open with no files: a reload reads the default (open) cluster again.
	o := startDaemon(t, m.datas["b"])
	if out := mustCLI(t, o, "cluster", "reload"); !strings.Contains(out, "reloaded: an open cluster") {
		t.Fatalf("reload of an --open daemon: %q", out)
	}
}

// cluster reload needs the cluster right: a user in the socket's group
// without it is refused (403, naming the right and how to get it) and
// nothing is reloaded; the cluster file's grant gives it.
func TestClusterReloadNeedsRight(t *testing.T) {
	group, tag := userTest(t, "p2pr")
	u := makeUser(t, "p2pru"+tag, group)            // no rights
	v := makeUser(t, "p2prv"+tag, group)            // granted cluster
	base, err := os.MkdirTemp("", "p2pimg-reload-") // t.TempDir's parents are 0700: the users could not reach it
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	ubin := filepath.Join(base, "p2pimg")
	if b, err := os.ReadFile(bin); err != nil || os.WriteFile(ubin, b, 0o755) != nil {
		t.Fatalf("copy the binary: %v", err)
	}
	data := filepath.Join(base, "data")
	os.Mkdir(data, 0o711) // the socket's directory: reachable, not listable
	self := strings.TrimSpace(mustCLI(t, nil, "identity", "--data", data))
	cc, err := cluster.New("lab", []string{self}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cc.Grants = map[string][]string{"user:" + v.name: {"cluster"}}
	cf := filepath.Join(base, "cluster.toml")
	if err := cc.Write(cf); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, data, "--socket-group", group, "--cluster", cf)

	out, errOut, code := cliAs(t, u, ubin, d, nil, "--json", "cluster", "reload")
	var e struct{ Error api.Error }
	if code != 1 || json.Unmarshal([]byte(out), &e) != nil || e.Error.Code != api.CodeForbidden ||
		!strings.Contains(e.Error.Message, `cluster reload needs the right "cluster"`) || !strings.Contains(e.Error.Message, `[grants] "user:`+u.name+`" = ["cluster"]`) {
		t.Fatalf("cluster reload by %s without the right: exit %d, %q %q; want forbidden naming the right and the grant", u.name, code, out, errOut)
	}
	log, _ := os.ReadFile(filepath.Join(data, "daemon.log"))
	if strings.Contains(string(log), "cluster reloaded") {
		t.Fatalf("a refused reload reloaded:\n%s", log)
	}
	if out, errOut, code := cliAs(t, v, ubin, d, nil, "cluster", "reload"); code != 0 || !strings.Contains(out, "reloaded: 1 member(s)") {
		t.Fatalf("cluster reload by %s, granted cluster: exit %d, %q %q", v.name, code, out, errOut)
	}
}
