package main

import (
	"strings"
	"testing"
	"time"

	"github.com/p2pimg/p2pimg/node/api"
)

func TestPeerChecks(t *testing.T) {
	t.Parallel()
	const (
		k1 = "12D3KooWKeeperOne00000000000000000000000000000001"
		k2 = "12D3KooWKeeperTwo00000000000000000000000000000002"
		p1 = "12D3KooWPeerOne0000000000000000000000000000000003"
	)
	self := api.Doctor{Cluster: "lab", Members: 3, MembersDigest: "m1", PSKDigest: "k1", Peers: []api.DoctorPeer{}, NeverSeen: []string{}, Refused: []api.RefusedPeer{}, DialFailures: []api.DialFailure{}}
	good := func(id string, keeper bool, offMS float64) api.DoctorPeer {
		return api.DoctorPeer{ID: id, Name: "hv", Keeper: keeper, Connected: true, ClockOffsetMillis: offMS, Cluster: "lab", Members: 3, MembersDigest: "m1", PSKDigest: "k1"}
	}
	with := func(f func(d *api.Doctor)) api.Doctor {
		d := self
		d.Peers = []api.DoctorPeer{good(k1, true, 3), good(k2, true, -2), good(p1, false, 40000)}
		f(&d)
		return d
	}
	for _, c := range []struct {
		name string
		d    api.Doctor
		want []string // "status name: substring" of some check each
	}{
		{"healthy: a peer's skew does not count when keepers answer", with(func(*api.Doctor) {}),
			[]string{"ok clock: within 500ms of every keeper: hv (…00000001) +3ms, hv (…00000002) -2ms", "ok members: 3 peer(s) answer with this host's cluster \"lab\", PSK and members list (3 members)"}},
		{"a keeper 7s ahead", with(func(d *api.Doctor) { d.Peers[0].ClockOffsetMillis = 7000 }),
			[]string{"fail clock: hv (…00000001)'s clock is 7s ahead of this host's: run NTP"}},
		{"a keeper 800ms behind", with(func(d *api.Doctor) { d.Peers[1].ClockOffsetMillis = -800 }),
			[]string{"warn clock: hv (…00000002)'s clock is 800ms behind this host's"}},
		{"a keeper down", with(func(d *api.Doctor) { d.Peers[1] = api.DoctorPeer{ID: k2, Keeper: true, Error: "probe: no route"} }),
			[]string{"warn clock: keeper …00000002 does not answer (probe: no route)"}},
		{"no keepers: the peers' clocks", with(func(d *api.Doctor) { d.Peers = d.Peers[2:] }),
			[]string{"fail clock: hv (…00000003)'s clock is 40s ahead of this host's"}},
		{"members differ", with(func(d *api.Doctor) { d.Peers[2].Members, d.Peers[2].MembersDigest = 4, "m2" }),
			[]string{"warn members: hv " + p1 + " has another members list (4 members; this host: 3 members): copy the same cluster or members file to every host and run 'p2pimg cluster reload' on each"}},
		{"psk differs", with(func(d *api.Doctor) { d.Peers[2].PSKDigest = "" }),
			[]string{"fail psk: hv " + p1 + " has no PSK, this host PSK k1"}},
		{"another cluster", with(func(d *api.Doctor) { d.Peers[2].Cluster = "prod" }),
			[]string{`fail cluster: hv ` + p1 + ` is in cluster "prod", this host in "lab"`}},
		{"connected but mute", with(func(d *api.Doctor) {
			d.Peers[2] = api.DoctorPeer{ID: p1, Connected: true, Error: "probe: protocols not supported"}
		}),
			[]string{"warn peer: " + p1 + " is connected but answers no probe: probe: protocols not supported"}},
		{"never seen, refused, unreachable", with(func(d *api.Doctor) {
			d.NeverSeen = []string{p1}
			d.Refused = []api.RefusedPeer{{ID: "12D3KooWStranger", Addr: "/ip4/10.0.0.9/tcp/4001", Count: 3, Last: time.Now()}}
			d.DialFailures = []api.DialFailure{{ID: k2, Addrs: []string{"/ip4/10.0.0.2/tcp/4001"}, Error: "dial backoff", Since: time.Now()}}
		}), []string{
			"warn members: 1 member(s) never seen since this daemon started: " + p1 + "; on each, is the daemon running",
			"warn refused: 12D3KooWStranger from /ip4/10.0.0.9/tcp/4001 was refused 3 time(s)",
			"it has this cluster's PSK but it is not in the members list; add it to the members list of every host and run 'p2pimg cluster reload'",
			"warn dial: configured peer …00000002 (/ip4/10.0.0.2/tcp/4001) not reachable since",
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var lines []string
			for _, ch := range peerChecks(c.d) {
				lines = append(lines, string(ch.Status)+" "+ch.Name+": "+ch.Detail)
			}
			all := strings.Join(lines, "\n")
			for _, w := range c.want {
				if !strings.Contains(all, w) {
					t.Errorf("want %q in:\n%s", w, all)
				}
			}
		})
	}
}
