package main

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/p2pimg/p2pimg/node/api"
)

// Clock offsets doctor warns and fails at: NTP keeps hosts within
// milliseconds; the keepers' seat margin (default 5s) must exceed the
// difference between their clocks.
const (
	clockWarn = 500 * time.Millisecond
	clockFail = 5 * time.Second
)

// peerChecks reads the daemon's probes of its peers and keepers: clock
// skew against the keepers, cluster name, PSK and members list per peer,
// peers that answer no probe, members never seen, hosts refused for not
// being members and configured peers not reachable. Each names the host
// and what to do.
func peerChecks(d api.Doctor) []check {
	var out []check
	out = append(out, clockCheck(d)...)
	var bad []check
	for _, p := range d.Peers {
		name := p.ID
		if p.Name != "" {
			name = p.Name + " " + p.ID
		}
		switch {
		case p.Error != "" && !p.Connected:
			// a keeper with no connection: the clock check names it
		case p.Error != "":
			bad = append(bad, check{"peer", checkWarn, fmt.Sprintf("%s is connected but answers no probe: %s; upgrade it to this version of p2pimg, or look at its log", name, p.Error)})
		case p.Cluster != d.Cluster:
			bad = append(bad, check{"cluster", checkFail, fmt.Sprintf("%s is in cluster %q, this host in %q: give every host the same cluster file", name, p.Cluster, d.Cluster)})
		case p.PSKDigest != d.PSKDigest:
			bad = append(bad, check{"psk", checkFail, fmt.Sprintf("%s has %s, this host %s: copy the same PSK file to every host and restart its daemon", name, pskName(p.PSKDigest), pskName(d.PSKDigest))})
		case p.MembersDigest != d.MembersDigest:
			bad = append(bad, check{"members", checkWarn, fmt.Sprintf("%s has another members list (%s; this host: %s): copy the same cluster or members file to every host and run 'p2pimg cluster reload' on each", name, membersName(p.Members), membersName(d.Members))})
		}
	}
	if len(bad) == 0 {
		n := 0
		for _, p := range d.Peers {
			if p.Error == "" {
				n++
			}
		}
		if n > 0 {
			more := ""
			if d.Unprobed > 0 {
				more = fmt.Sprintf("; %d more connected peer(s) not probed (at most 64 are)", d.Unprobed)
			}
			out = append(out, check{"members", checkOK, fmt.Sprintf("%d peer(s) answer with this host's cluster %q, PSK and members list (%s)%s", n, d.Cluster, membersName(d.Members), more)})
		}
	}
	out = append(out, bad...)
	if len(d.NeverSeen) > 0 {
		out = append(out, check{"members", checkWarn, fmt.Sprintf("%d member(s) never seen since this daemon started: %s; on each, is the daemon running with this cluster's PSK, and can this host reach it (--peer ADDR, mDNS on the LAN)? Remove members retired for good from the members list", len(d.NeverSeen), shortList(d.NeverSeen))})
	}
	has := ""
	if d.PSKDigest != "" {
		has = "it has this cluster's PSK but "
	}
	for _, r := range d.Refused {
		out = append(out, check{"refused", checkWarn, fmt.Sprintf("%s from %s was refused %d time(s), last %s: %sit is not in the members list; add it to the members list of every host and run 'p2pimg cluster reload', or find who runs it", r.ID, r.Addr, r.Count, r.Last.Local().Format(time.DateTime), has)})
	}
	for _, f := range d.DialFailures {
		out = append(out, check{"dial", checkWarn, fmt.Sprintf("configured peer %s (%s) not reachable since %s: %s; check the address and that its daemon runs; a host with another PSK also fails here", short(f.ID), strings.Join(f.Addrs, ", "), f.Since.Local().Format(time.DateTime), f.Error)})
	}
	return out
}

// clockCheck compares this host's clock with the keepers' (or, with no
// keepers, with the peers').
func clockCheck(d api.Doctor) []check {
	against := "keeper"
	var ps []api.DoctorPeer
	for _, p := range d.Peers {
		if p.Keeper {
			ps = append(ps, p)
		}
	}
	if len(ps) == 0 {
		against, ps = "peer", d.Peers
	}
	var out, fine []string
	worst := checkOK
	for _, p := range ps {
		name := short(p.ID)
		if p.Name != "" {
			name = p.Name + " (" + short(p.ID) + ")"
		}
		if p.Error != "" {
			if p.Keeper {
				out = append(out, fmt.Sprintf("keeper %s does not answer (%s): its clock is unknown, and seats need a majority of keepers", name, p.Error))
				worst = worse(worst, checkWarn)
			}
			continue
		}
		off := time.Duration(p.ClockOffsetMillis * float64(time.Millisecond))
		abs := time.Duration(math.Abs(float64(off)))
		s := fmt.Sprintf("%s %+.0fms", name, p.ClockOffsetMillis)
		switch {
		case abs >= clockFail:
			worst = worse(worst, checkFail)
			out = append(out, fmt.Sprintf("%s's clock is %s %s this host's", name, roundSkew(abs), aheadBehind(off)))
		case abs >= clockWarn:
			worst = worse(worst, checkWarn)
			out = append(out, fmt.Sprintf("%s's clock is %s %s this host's", name, roundSkew(abs), aheadBehind(off)))
		default:
			fine = append(fine, s)
		}
	}
	if len(ps) == 0 {
		return nil
	}
	if worst == checkOK {
		return []check{{"clock", checkOK, fmt.Sprintf("within %s of every %s: %s", clockWarn, against, strings.Join(fine, ", "))}}
	}
	return []check{{"clock", worst, strings.Join(out, "; ") + ": run NTP (chrony or systemd-timesyncd) on every host; the keepers' seat margin (default 5s) must exceed their clocks' difference, and operator signatures are refused past 2 minutes"}}
}

func worse(a, b checkStatus) checkStatus {
	rank := map[checkStatus]int{checkOK: 0, checkWarn: 1, checkFail: 2}
	if rank[b] > rank[a] {
		return b
	}
	return a
}

func aheadBehind(d time.Duration) string {
	if d < 0 {
		return "behind"
	}
	return "ahead of"
}

func pskName(digest string) string {
	if digest == "" {
		return "no PSK"
	}
	return "PSK " + digest
}

func membersName(n int) string {
	if n == 0 {
		return "none: an open cluster"
	}
	return fmt.Sprintf("%d members", n)
}

// shortList names at most 5 hosts, then how many more.
func shortList(ids []string) string {
	var s []string
	for i, id := range ids {
		if i == 5 {
			s = append(s, fmt.Sprintf("and %d more", len(ids)-5))
			break
		}
		s = append(s, id)
	}
	return strings.Join(s, ", ")
}

// roundSkew shows a clock offset to the millisecond below a second, to
// the tenth above (the probe's own error is half a round trip).
func roundSkew(d time.Duration) time.Duration {
	if d >= time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Millisecond)
}
