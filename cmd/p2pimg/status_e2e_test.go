package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/p2pimg/p2pimg/node/api"
)

// statusCLI checks status on a 3-node testnet (nodes named node1..3,
// labelled node=K) where web:1 is active everywhere: names, filters, the
// summary, and errors that name what matched nothing; and activation
// selectors that match no host or are malformed.
func statusCLI(t *testing.T, dir string) {
	t.Helper()
	run := func(args ...string) (string, string, int) {
		t.Helper()
		return cli(t, nil, append([]string{"--testnet-dir", dir, "--node", "1"}, args...)...)
	}
	// A host's name and labels travel in its own host record, which may
	// arrive after its activation's state: wait for all three names.
	var out string
	var code int
	waitFor(t, "status to name node1..3", func() bool {
		out, _, code = run("status")
		return strings.Contains(out, "node1") && strings.Contains(out, "node2") && strings.Contains(out, "node3")
	})
	if code != 0 || strings.Count(out, "web:1") != 4 || !strings.Contains(out, "node2") ||
		!strings.Contains(out, "web:1  3      active 3/3") {
		t.Fatalf("status: exit %d\n%s", code, out)
	}
	var rows []api.HostActivation
	out, _, _ = run("status", "--json", "--host", "node2", "--layer", "web", "--state", "active")
	if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 1 || rows[0].HostName != "node2" || rows[0].Labels["node"] != "2" {
		t.Fatalf("status --host node2 --layer web --state active: %v\n%s", err, out)
	}
	out, _, _ = run("status", "--json", "-l", "node=3")
	if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 1 || rows[0].HostName != "node3" {
		t.Fatalf("status -l node=3: %v\n%s", err, out)
	}
	if out, _, _ = run("status", "--json", "--state", "failed"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("status --state failed --json: %q, want []", out)
	}
	if out, _, _ = run("status", "--summary", "-l", "node=1"); !strings.Contains(out, "active 1/1") || strings.Contains(out, "node1") {
		t.Fatalf("status --summary -l node=1:\n%s", out)
	}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"status", "--host", "hv-99"}, 1, `--host "hv-99": no host`},
		{[]string{"status", "--layer", "nosuch:1"}, 1, `--layer "nosuch:1"`},
		{[]string{"status", "--state", "bogus"}, 2, `--state "bogus"`},
		{[]string{"status", "-l", "no label"}, 2, "-l: label"},
		{[]string{"activate", "web:1", "--at", "/opt/w2", "--hosts", "node=99", "--wait"}, 1, `"node=99" selects no known host`},
		{[]string{"activate", "web:1", "--at", "/opt/w2", "--hosts", "12D3bogus"}, 2, `"12D3bogus" is not a peer id`},
	} {
		_, errOut, code := run(c.args...)
		if code != c.code || !strings.Contains(errOut, c.want) {
			t.Errorf("p2pimg %s: exit %d %q; want exit %d naming %q", strings.Join(c.args, " "), code, errOut, c.code, c.want)
		}
	}
	// doctor on a healthy closed cluster: every check ok or a kernel
	// warning, the peers connected.
	out, errOut, code := run("doctor")
	if code != 0 || !strings.Contains(out, "ok    peers      2 connected of 2 other host(s) known") || !strings.Contains(out, `ok    cluster    "testnet" with a members list`) {
		t.Fatalf("doctor: exit %d %s\n%s", code, errOut, out)
	}
	if !strings.Contains(out, "free of") || !strings.Contains(out, "under the data directory") {
		t.Fatalf("doctor shows no host's disk:\n%s", out)
	}
	// The refused selector published nothing.
	if out, _, _ := run("status", "--json", "--layer", "web:1"); strings.Contains(out, "/opt/w2") {
		t.Fatalf("an activation that selected no host was published:\n%s", out)
	}
}
