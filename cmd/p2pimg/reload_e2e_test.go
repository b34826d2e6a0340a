package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/testnet"
)

// cluster reload and SIGHUP: a host taken out of the members file is
// disconnected and kept out, one put in may connect, a bad file or a new
// PSK is refused with the old config kept.
func TestClusterReload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	datas, ids := map[string]string{}, map[string]string{}
	for _, h := range []string{"a", "b", "c", "d"} {
		datas[h] = filepath.Join(dir, h)
		ids[h] = strings.TrimSpace(mustCLI(t, nil, "identity", "--data", datas[h]))
	}
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	key := write("swarm.key", strings.Repeat("ab", 32)+"\n")
	all := write("members-all", ids["a"]+"\n"+ids["b"]+"\n"+ids["c"]+"\n"+ids["d"]+"\n")
	members := write("members", ids["a"]+"\n"+ids["b"]+"\n"+ids["c"]+"\n")
	start := func(h, members string, extra ...string) *testnet.Daemon {
		d, err := testnet.StartDaemon(context.Background(), bin, datas[h], append([]string{"--psk", key, "--members", members}, extra...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.Kill)
		return d
	}
	a := start("a", members)
	id, err := a.Client.Identity(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	start("b", all, "--peer", id.Addrs[0])
	start("c", all, "--peer", id.Addrs[0])
	start("d", all, "--peer", id.Addrs[0])
	peers := func() []string {
		ps, _ := a.Client.Peers(context.Background())
		var out []string
		for _, p := range ps {
			out = append(out, p.PeerID)
		}
		slices.Sort(out)
		return out
	}
	logHas := func(d *testnet.Daemon, what string) func() bool {
		return func() bool {
			log, _ := os.ReadFile(filepath.Join(d.Data, "daemon.log"))
			return bytes.Contains(log, []byte(what))
		}
	}
	waitFor(t, "b and c connected to a", func() bool {
		ps := peers()
		return slices.Contains(ps, ids["b"]) && slices.Contains(ps, ids["c"])
	})
	waitFor(t, "a to refuse d", logHas(a, `not a cluster member" peer=`+ids["d"]))

	// c out: disconnected at once, and its redials refused.
	write("members", ids["a"]+"\n"+ids["b"]+"\n")
	out := mustCLI(t, a, "cluster", "reload")
	if !strings.Contains(out, "reloaded: 2 member(s)") || !strings.Contains(out, ids["c"]) {
		t.Fatalf("cluster reload: %q; want 2 members and c disconnected", out)
	}
	waitFor(t, "a to refuse c's redial", logHas(a, `not a cluster member" peer=`+ids["c"]))
	if ps := peers(); slices.Contains(ps, ids["c"]) || !slices.Contains(ps, ids["b"]) {
		t.Fatalf("a's peers after c left the members: %v", ps)
	}

	// d in, by SIGHUP: d's next redial is admitted.
	write("members", ids["a"]+"\n"+ids["b"]+"\n"+ids["d"]+"\n")
	if err := syscall.Kill(a.Pid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a to log the SIGHUP reload", logHas(a, `cluster reloaded" members=3`))
	// d's dials back off after refusals: a minute.
	waitWithin(t, time.Minute, "d to connect after it was added", func() bool { return slices.Contains(peers(), ids["d"]) })

	var r api.ClusterReload
	if err := json.Unmarshal([]byte(mustCLI(t, a, "--json", "cluster", "reload")), &r); err != nil || r.Members != 3 || r.Disconnected == nil || len(r.Disconnected) != 0 {
		t.Fatalf("cluster reload --json: %+v, %v; want 3 members and [] disconnected", r, err)
	}

	// A bad members file, a new PSK: refused, nothing changes.
	for _, tc := range []struct{ file, body, want string }{
		{"members", ids["a"] + "\nnot-a-peer\n", `line 2: "not-a-peer" is not a peer id`},
		{"members", "# nobody\n", "no peer id"},
		{"swarm.key", strings.Repeat("cd", 32) + "\n", "changed psk: needs a daemon restart"},
	} {
		old, _ := os.ReadFile(filepath.Join(dir, tc.file))
		write(tc.file, tc.body)
		_, errOut, code := cli(t, a, "cluster", "reload")
		if code != 1 || !strings.Contains(errOut, tc.want) {
			t.Errorf("reload with %s = %q: exit %d, %q; want exit 1 and %q", tc.file, tc.body, code, errOut, tc.want)
		}
		write(tc.file, string(old))
	}
	if ps := peers(); !slices.Contains(ps, ids["b"]) || !slices.Contains(ps, ids["d"]) || slices.Contains(ps, ids["c"]) {
		t.Fatalf("a's peers after refused reloads: %v; want b and d, not c", ps)
	}

}
