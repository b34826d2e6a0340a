package main

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
)

// statusFilter is what `status` narrows its rows to.
type statusFilter struct {
	layers, hosts, states, labels []string
}

// check reads the filters, as usage errors when malformed.
func (f *statusFilter) check() (map[string]string, error) {
	for _, s := range f.states {
		if !api.State(s).Valid() {
			return nil, usageError{fmt.Errorf("--state %q: want one of requested, fetching, active, waiting-for-seat, deactivating, inactive, failed", s)}
		}
	}
	lbl := map[string]string{}
	for _, l := range f.labels {
		k, v, err := api.ParseLabel(l)
		if err != nil {
			return nil, usageError{fmt.Errorf("-l: %w", err)}
		}
		lbl[k] = v
	}
	return lbl, nil
}

// hostMatches reports whether a host is one that --host names: by name,
// peer id, or the tail of its peer id (as status shows it).
func hostMatches(s api.HostActivation, want string) bool {
	want = strings.TrimPrefix(want, "…")
	return s.HostName == want || s.Host == want || (len(want) >= 6 && strings.HasSuffix(s.Host, want))
}

// layerMatches reports whether --layer names this layer: NAME:TAG exactly,
// or NAME for every tag.
func layerMatches(layer, want string) bool {
	n, err := chunk.ParseName(layer)
	return layer == want || (err == nil && n.Repo == want)
}

// keep applies the filters; a --host or --layer that matches no row is an
// error naming it.
func (f *statusFilter) keep(rows []api.HostActivation, labels map[string]string) ([]api.HostActivation, error) {
	for _, h := range f.hosts {
		if !slices.ContainsFunc(rows, func(s api.HostActivation) bool { return hostMatches(s, h) }) {
			return nil, fmt.Errorf("--host %q: no host of that name or peer id reports any layer (hosts reporting: %s)", h, hostNames(rows))
		}
	}
	for _, l := range f.layers {
		if !slices.ContainsFunc(rows, func(s api.HostActivation) bool { return layerMatches(s.Layer, l) }) {
			return nil, fmt.Errorf("--layer %q: no host reports a state for that layer (see `p2pimg layers --all`)", l)
		}
	}
	var out []api.HostActivation
	for _, s := range rows {
		if len(f.hosts) > 0 && !slices.ContainsFunc(f.hosts, func(h string) bool { return hostMatches(s, h) }) {
			continue
		}
		if len(f.layers) > 0 && !slices.ContainsFunc(f.layers, func(l string) bool { return layerMatches(s.Layer, l) }) {
			continue
		}
		if len(f.states) > 0 && !slices.Contains(f.states, string(s.State)) {
			continue
		}
		if !labelsMatch(s.Labels, labels) {
			continue
		}
		out = append(out, s)
	}
	return out, nil
}

func labelsMatch(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// hostNames lists the hosts in rows by name, for an error message.
func hostNames(rows []api.HostActivation) string {
	set := map[string]bool{}
	for _, s := range rows {
		set[hostName(s)] = true
	}
	if len(set) == 0 {
		return "none"
	}
	return strings.Join(slices.Sorted(maps.Keys(set)), ", ")
}

// hostName is how a host is shown: its name, else the tail of its peer id.
func hostName(s api.HostActivation) string { return cmp.Or(s.HostName, short(s.Host)) }

// layerSummary is one layer's summary line of `status`.
type layerSummary struct {
	Layer       string      `json:"layer"`
	Summary     api.Summary `json:"summary"`
	Hosts       int         `json:"hosts"`
	Unreachable int         `json:"unreachable"`
}

func summarize(rows []api.HostActivation) []layerSummary {
	by := map[string]*layerSummary{}
	for _, s := range rows {
		ls := by[s.Layer]
		if ls == nil {
			ls = &layerSummary{Layer: s.Layer, Summary: api.Summary{}}
			by[s.Layer] = ls
		}
		ls.Summary[s.State]++
		ls.Hosts++
		if s.Reach == api.ReachUnreachable || s.Reach == api.ReachGone {
			ls.Unreachable++
		}
	}
	out := []layerSummary{}
	for _, k := range slices.Sorted(maps.Keys(by)) {
		out = append(out, *by[k])
	}
	return out
}

func (ls layerSummary) String() string {
	s := ls.Summary.String()
	if ls.Unreachable > 0 {
		s += fmt.Sprintf(", %d unreachable", ls.Unreachable)
	}
	return s
}

func (a *app) statusCmd() *cobra.Command {
	var f statusFilter
	var summary bool
	c := &cobra.Command{
		Use:   "status",
		Short: "Show every layer's activation state on every host, with a summary per layer",
		Long: `Show each host's state for each layer it was asked to activate or
deactivate: the host (its name, or the tail of its peer id), state, path,
mode, when it was last heard from (hosts not heard from lately are marked
unreachable: their rows may be out of date), and the reason of a failure.
A summary line per layer follows (active 37/40, fetching 2, failed 1).`,
		Example: `  p2pimg status
  p2pimg status --layer web --state failed       # every tag of web that failed somewhere
  p2pimg status --host hv-07 --host hv-08
  p2pimg status -l rack=r12 --summary
  p2pimg status --json | jq '.[] | select(.reach != "up")'`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			labels, err := f.check()
			if err != nil {
				return err
			}
			all, err := a.client().Activations(c.Context())
			if err != nil {
				return err
			}
			rows, err := f.keep(all, labels)
			if err != nil {
				return err
			}
			sort.Slice(rows, func(i, j int) bool {
				return cmp.Or(strings.Compare(rows[i].Layer, rows[j].Layer), strings.Compare(hostName(rows[i]), hostName(rows[j])), strings.Compare(rows[i].Host, rows[j].Host)) < 0
			})
			sums := summarize(rows)
			if a.json {
				if summary {
					return a.printJSON(sums)
				}
				if rows == nil {
					rows = []api.HostActivation{}
				}
				return a.printJSON(rows)
			}
			return a.printStatus(c, rows, sums, summary)
		},
	}
	c.Flags().StringArrayVar(&f.layers, "layer", nil, "only this `LAYER` (NAME:TAG, or NAME for every tag; repeatable)")
	c.Flags().StringArrayVar(&f.hosts, "host", nil, "only this `HOST`: its name, peer id or the id's tail (repeatable)")
	c.Flags().StringArrayVar(&f.states, "state", nil, "only hosts in this `STATE`: requested, fetching, active, waiting-for-seat, deactivating, inactive, failed (repeatable)")
	c.Flags().StringArrayVarP(&f.labels, "label", "l", nil, "only hosts with this label `KEY=VALUE` (repeatable: all must match)")
	c.Flags().BoolVar(&summary, "summary", false, "print only the summary line of each layer")
	return c
}

func (a *app) printStatus(c *cobra.Command, rows []api.HostActivation, sums []layerSummary, summaryOnly bool) error {
	if len(rows) == 0 {
		fmt.Fprintln(a.stdout, "no host reports a layer state (activate one with `p2pimg activate NAME --at PATH`)")
		return nil
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	if !summaryOnly {
		fmt.Fprintln(tw, "LAYER\tHOST\tSTATE\tPATH\tMODE\tSEEN\tDETAIL")
		for _, s := range rows {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Layer, hostName(s), s.State, s.At, s.Mode, seen(s), detail(s))
		}
		fmt.Fprintln(tw)
	}
	fmt.Fprintln(tw, "LAYER\tHOSTS\tSUMMARY")
	for _, ls := range sums {
		fmt.Fprintf(tw, "%s\t%d\t%s\n", ls.Layer, ls.Hosts, ls)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// Policy conflicts: pairs the hosts refuse to sync.
	if cs, err := a.client().PolicyCheck(c.Context()); err == nil && len(cs) > 0 {
		fmt.Fprintf(a.stdout, "\npolicy conflicts (not synced):\n")
		for _, r := range cs {
			fmt.Fprintf(a.stdout, "  %s on %s: %s\n", r.Layer, short(r.Host), r.Conflict.Error())
		}
	}
	return nil
}

// detail is a row's detail: a fetch's progress as figures, else the
// host's own words.
func detail(s api.HostActivation) string {
	if s.State == api.StateFetching && s.Total > 0 {
		return fmt.Sprintf("%d%% of %s from %d peer(s)", s.Done*100/s.Total, humanize.IBytes(uint64(s.Total)), s.Peers)
	}
	return s.Detail
}

// seen says whether a host's row is current: "now" for this host and hosts
// heard from, else how long it has been unheard ("unreachable 2m", "gone 3h").
func seen(s api.HostActivation) string {
	switch s.Reach {
	case api.ReachSelf, api.ReachUp, "":
		return "now"
	}
	if s.LastSeen.IsZero() {
		return string(s.Reach)
	}
	return fmt.Sprintf("%s %s", s.Reach, time.Since(s.LastSeen).Round(time.Second))
}
