package main

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/client"
)

// checkStatus is the outcome of one doctor check.
type checkStatus string

const (
	checkOK   checkStatus = "ok"
	checkWarn checkStatus = "warn"
	checkFail checkStatus = "fail"
)

// check is one line of `p2pimg doctor`.
type check struct {
	Name   string      `json:"name"`
	Status checkStatus `json:"status"`
	Detail string      `json:"detail"`
}

// lowDisk is the free space under which doctor warns.
const lowDisk = 5 << 30

func (a *app) doctorCmd() *cobra.Command {
	var probes bool
	c := &cobra.Command{
		Use:   "doctor",
		Short: "Check this host's p2pimg: socket, daemon, overlay and FUSE support, cluster, peers, seats, free space",
		Long: `Check what this host's daemon needs and report each check as ok, warn or
fail, with what to do: the API socket and who may use it, the daemon,
overlayfs and FUSE (how layers are exposed), whether the cluster has a
members list, the peers connected and the hosts not heard from, whether the
keepers answer for seats, and the free space of the data directory. The
daemon probes every connected peer and every keeper: clock skew against the
keepers, and per peer whether its cluster name, PSK and members list match
this host's; members never seen, hosts refused because they are not
members, and configured peers not reachable are named with what to do.
Exits 1 if any check fails.`,
		Example: `  p2pimg doctor
  p2pimg doctor --json | jq '.[] | select(.status != "ok")'
  p2pimg doctor --probes          # each peer's clock offset, round trip, cluster, PSK and members digests`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			cl := a.client()
			if probes {
				return a.printProbes(c.Context(), cl)
			}
			checks := append(socketChecks(cl.Socket()), kernelChecks()...)
			checks = append(checks, daemonChecks(c.Context(), cl)...)
			if a.json {
				if err := a.printJSON(checks); err != nil {
					return err
				}
			} else {
				for _, ch := range checks {
					fmt.Fprintf(a.stdout, "%-4s  %-9s  %s\n", ch.Status, ch.Name, ch.Detail)
				}
			}
			failed := 0
			for _, ch := range checks {
				if ch.Status == checkFail {
					failed++
				}
			}
			if failed > 0 {
				return reported{fmt.Errorf("doctor: %d check(s) failed", failed)}
			}
			return nil
		},
	}
	c.Flags().BoolVar(&probes, "probes", false, "print the daemon's probes of its peers and keepers instead of the checks")
	return c
}

// printProbes prints the daemon's probe report: one row per peer probed.
func (a *app) printProbes(ctx context.Context, cl *client.Client) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	d, err := cl.Doctor(ctx)
	if err != nil {
		return err
	}
	if a.json {
		return a.printJSON(d)
	}
	fmt.Fprintf(a.stdout, "this host %s: cluster %q, %s, %s\n", d.Self, d.Cluster, membersName(d.Members), pskName(d.PSKDigest))
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tNAME\tKEEPER\tCONNECTED\tRTT\tCLOCK\tCLUSTER\tMEMBERS\tPSK\tERROR")
	for _, p := range d.Peers {
		if p.Error != "" {
			fmt.Fprintf(tw, "%s\t%s\t%v\t%v\t\t\t\t\t\t%s\n", p.ID, p.Name, p.Keeper, p.Connected, p.Error)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%v\t%v\t%.1fms\t%+.0fms\t%s\t%d %s\t%s\t\n", p.ID, p.Name, p.Keeper, p.Connected, p.RTTMillis, p.ClockOffsetMillis, p.Cluster, p.Members, p.MembersDigest, cmp.Or(p.PSKDigest, "none"))
	}
	return tw.Flush()
}

// socketChecks looks at the API socket: there, a socket, and not open to
// every local user.
func socketChecks(path string) []check {
	fi, err := os.Stat(path)
	if err != nil {
		return []check{{"socket", checkFail, fmt.Sprintf("%s: %v (is the daemon running? is --socket or P2PIMG_SOCKET right?)", path, err)}}
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return []check{{"socket", checkFail, path + " is not a socket"}}
	}
	perm := fi.Mode().Perm()
	detail := fmt.Sprintf("%s (mode %04o)", path, perm)
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		detail = fmt.Sprintf("%s (mode %04o, uid %d, gid %d)", path, perm, st.Uid, st.Gid)
	}
	if perm&0o007 != 0 {
		return []check{{"socket", checkFail, detail + ": every local user may use the API, which reads and writes any path as the daemon; restart the daemon (it sets 0600, or 0660 with --socket-group)"}}
	}
	return []check{{"socket", checkOK, detail}}
}

// kernelChecks looks for overlayfs and FUSE, which the fuse and overlay
// exposure modes need (without them layers are materialized: a copy).
func kernelChecks() []check {
	fsys, _ := os.ReadFile("/proc/filesystems")
	has := func(fs string) bool {
		for _, l := range strings.Split(string(fsys), "\n") {
			if f := strings.Fields(l); len(f) > 0 && f[len(f)-1] == fs {
				return true
			}
		}
		return false
	}
	var out []check
	if has("overlay") {
		out = append(out, check{"overlay", checkOK, "overlayfs is available"})
	} else {
		out = append(out, check{"overlay", checkWarn, "no overlayfs (modprobe overlay): activations fall back to materialized copies"})
	}
	if _, err := os.Stat("/dev/fuse"); err == nil && has("fuse") {
		out = append(out, check{"fuse", checkOK, "/dev/fuse and the fuse filesystem are available"})
	} else {
		out = append(out, check{"fuse", checkWarn, "no /dev/fuse or fuse filesystem (modprobe fuse; install fuse3): layers cannot be served from the store without a copy"})
	}
	return out
}

// daemonChecks asks the daemon about itself and the cluster.
func daemonChecks(ctx context.Context, cl *client.Client) []check {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := cl.Status(ctx)
	if err != nil {
		return []check{{"daemon", checkFail, err.Error()}}
	}
	if st.State != api.DaemonReady {
		return []check{{"daemon", checkWarn, fmt.Sprintf("pid %d is %s (opening its store); run doctor again in a moment", st.PID, st.State)}}
	}
	out := []check{{"daemon", checkOK, fmt.Sprintf("%s, pid %d, up %s", st.Version, st.PID, time.Since(st.Started).Round(time.Second))}}
	id, err := cl.Identity(ctx)
	if err != nil {
		return append(out, check{"cluster", checkFail, err.Error()})
	}
	if id.Open {
		out = append(out, check{"cluster", checkWarn, fmt.Sprintf("%q is open: no members list, any host that reaches this one may join (cluster init --members)", id.Cluster)})
	} else {
		out = append(out, check{"cluster", checkOK, fmt.Sprintf("%q with a members list", id.Cluster)})
	}
	f, err := cl.Fleet(ctx)
	if err != nil {
		return append(out, check{"fleet", checkFail, err.Error()})
	}
	out = append(out, fleetChecks(f)...)
	d, err := cl.Doctor(ctx)
	if err != nil {
		return append(out, check{"peers", checkFail, "probe the peers: " + err.Error()})
	}
	return append(out, peerChecks(d)...)
}

// fleetChecks reads peers, liveness, seats and disk from the fleet view.
func fleetChecks(f api.Fleet) []check {
	var out []check
	var down []string
	for _, h := range f.Hosts {
		if h.Reach == api.ReachUnreachable || h.Reach == api.ReachGone {
			down = append(down, cmp.Or(h.Name, short(h.ID)))
		}
	}
	switch {
	case len(f.Peers) == 0 && len(f.Hosts) <= 1:
		out = append(out, check{"peers", checkWarn, "no peer connected and none known: check --peer addresses, mDNS on the LAN, the PSK and that this host is in the members list"})
	case len(f.Peers) == 0:
		out = append(out, check{"peers", checkFail, fmt.Sprintf("no peer connected, %d host(s) known: this host is cut off (network, PSK or members list differ?)", len(f.Hosts)-1)})
	default:
		out = append(out, check{"peers", checkOK, fmt.Sprintf("%d connected of %d other host(s) known", len(f.Peers), len(f.Hosts)-1)})
	}
	if len(down) > 0 {
		out = append(out, check{"hosts", checkWarn, fmt.Sprintf("not heard from lately: %s ('p2pimg cluster forget ID' for hosts retired for good)", strings.Join(down, ", "))})
	}
	if f.SeatsError != "" {
		out = append(out, check{"seats", checkWarn, "the keepers do not answer: " + f.SeatsError})
	} else if f.Seats.Leader != "" {
		out = append(out, check{"seats", checkOK, fmt.Sprintf("keepers answer (leader %s), %d licence(s)", short(f.Seats.Leader), len(f.Seats.Licenses))})
	}
	for _, h := range f.Hosts {
		if h.ID != f.Self || h.Store == nil || h.Store.DiskTotal == 0 {
			continue // the others announce theirs: this checks this host
		}
		detail := fmt.Sprintf("%s free of %s under the data directory", humanize.IBytes(uint64(h.Store.DiskFree)), humanize.IBytes(uint64(h.Store.DiskTotal)))
		if h.Store.DiskFree < lowDisk {
			out = append(out, check{"disk", checkWarn, detail + ": fetches of large layers may not fit"})
		} else {
			out = append(out, check{"disk", checkOK, detail})
		}
	}
	return out
}
