package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/testnet"
)

// doctor against real daemons: a peer whose clock is 10s ahead, a peer
// with another members list, a member never started (and configured as a
// --peer it cannot reach), and a host with the PSK that is no member.
func TestDoctorPeers(t *testing.T) {
	t.Parallel()
	m := newMemberNet(t, "a", "b", "c", "x")
	ids, start := m.ids, m.start
	aMembers := m.members("members-a", "a", "b", "x")
	others := m.members("members-others", "a", "b", "c")
	// x never runs: a dials it at a closed port.
	a := start("a", aMembers, "--peer", "/ip4/127.0.0.1/tcp/1/p2p/"+ids["x"])
	id, err := a.Client.Identity(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	start("b", others, "--peer", id.Addrs[0], "--test-clock-offset", "10s")
	start("c", others, "--peer", id.Addrs[0])

	doctor := func() (map[string][]check, int) {
		out, _, code := cli(t, a, "--json", "doctor")
		var checks []check
		if err := json.Unmarshal([]byte(out), &checks); err != nil {
			t.Fatalf("doctor --json: %v\n%s", err, out)
		}
		by := map[string][]check{}
		for _, c := range checks {
			by[c.Name] = append(by[c.Name], c)
		}
		return by, code
	}
	has := func(by map[string][]check, name string, st checkStatus, sub string) bool {
		return slices.ContainsFunc(by[name], func(c check) bool { return c.Status == st && strings.Contains(c.Detail, sub) })
	}
	var by map[string][]check
	var code int
	waitFor(t, "doctor to see b, c and x", func() bool {
		by, code = doctor()
		return len(by["clock"]) > 0 && len(by["refused"]) > 0 && len(by["dial"]) > 0
	})
	if code != 1 {
		t.Errorf("doctor with a failed check: exit %d, want 1", code)
	}
	for _, w := range []struct {
		name string
		st   checkStatus
		sub  string
	}{
		{"clock", checkFail, short(ids["b"]) + ")'s clock is 10"},
		{"clock", checkFail, "s ahead of this host's: run NTP"},
		{"members", checkWarn, ids["b"] + " has another members list (3 members; this host: 3 members)"},
		{"members", checkWarn, "1 member(s) never seen since this daemon started: " + ids["x"]},
		{"refused", checkWarn, ids["c"] + " from /ip4/127.0.0.1/tcp/"},
		{"refused", checkWarn, "it has this cluster's PSK but it is not in the members list"},
		{"dial", checkWarn, "configured peer " + short(ids["x"]) + " (/ip4/127.0.0.1/tcp/1) not reachable"},
	} {
		if !has(by, w.name, w.st, w.sub) {
			t.Errorf("doctor: no %s %s check with %q in %+v", w.st, w.name, w.sub, by[w.name])
		}
	}
	var d api.Doctor
	if err := json.Unmarshal([]byte(mustCLI(t, a, "--json", "doctor", "--probes")), &d); err != nil {
		t.Fatal(err)
	}
	if len(d.Peers) != 1 || d.Peers[0].ID != ids["b"] || d.Peers[0].ClockOffsetMillis < 9000 || d.Peers[0].PSKDigest != d.PSKDigest {
		t.Errorf("doctor --probes: %+v", d)
	}
}

// doctor compares this host's clock with the keepers' (not the other
// peers'): with node1 the only keeper, 10s behind, node2's doctor fails
// naming it, though node3 (+10s) is as far off.
func TestDoctorKeeperClock(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "tn")
	l, err := testnet.Up(ctx, bin, dir, 3, testnet.UpOptions{Keepers: 1, ClockSkew: 10 * time.Second, Announce: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Down(context.Background(), false) })
	keeper := l.Nodes[0].PeerID
	var clock []check
	waitFor(t, "node2's doctor to probe the keeper", func() bool {
		out, _, _ := cli(t, nil, "--testnet-dir", dir, "--node", "2", "--json", "doctor")
		var checks []check
		json.Unmarshal([]byte(out), &checks)
		clock = nil
		for _, c := range checks {
			if c.Name == "clock" {
				clock = append(clock, c)
			}
		}
		return len(clock) == 1 && !strings.Contains(clock[0].Detail, "does not answer")
	})
	behind := regexp.MustCompile(regexp.QuoteMeta(short(keeper)) + `\)'s clock is (9\.9|10|10\.1)s behind this host's`)
	if c := clock[0]; c.Status != checkFail || !behind.MatchString(c.Detail) || strings.Contains(c.Detail, short(l.Nodes[2].PeerID)) {
		t.Fatalf("node2's clock check: %+v; want a failure naming only the keeper node1, 10s behind", c)
	}
}
