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
	m := newMemberNet(t, "a", "b", "c", "d")
	dir, ids, write, start := m.dir, m.ids, m.write, m.start
	all := m.members("members-all", "a", "b", "c", "d")
	members := m.members("members", "a", "b", "c")
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

// memberNet is a set of daemons of one cluster with a PSK, each started
// by start with its own members file: for tests of who is let in.
type memberNet struct {
	t     *testing.T
	dir   string
	key   string // the PSK file
	datas map[string]string
	ids   map[string]string
}

// newMemberNet makes the identities of hosts (their peer ids in ids) and a PSK.
func newMemberNet(t *testing.T, hosts ...string) *memberNet {
	t.Helper()
	m := &memberNet{t: t, dir: t.TempDir(), datas: map[string]string{}, ids: map[string]string{}}
	for _, h := range hosts {
		m.datas[h] = filepath.Join(m.dir, h)
		m.ids[h] = strings.TrimSpace(mustCLI(t, nil, "identity", "--data", m.datas[h]))
	}
	m.key = m.write("swarm.key", strings.Repeat("ab", 32)+"\n")
	return m
}

// write writes a file of the net's directory and returns its path.
func (m *memberNet) write(name, body string) string {
	m.t.Helper()
	p := filepath.Join(m.dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		m.t.Fatal(err)
	}
	return p
}

// members writes a members file listing hosts.
func (m *memberNet) members(name string, hosts ...string) string {
	var b strings.Builder
	for _, h := range hosts {
		b.WriteString(m.ids[h] + "\n")
	}
	return m.write(name, b.String())
}

// start runs host h's daemon with the PSK and the members file.
func (m *memberNet) start(h, members string, extra ...string) *testnet.Daemon {
	m.t.Helper()
	d, err := testnet.StartDaemon(context.Background(), bin, m.datas[h], append([]string{"--psk", m.key, "--members", members}, extra...)...)
	if err != nil {
		m.t.Fatal(err)
	}
	m.t.Cleanup(d.Kill)
	return d
}
