package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/p2pimg/p2pimg/policy"
)

func (a *app) policyCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "policy",
		Short: "Synchronisation policies: the layer's first, the host's second, conflicts refused",
		Long: `A layer policy (set by whoever publishes the layer) says which hosts hold the
layer even when it is not active, how many complete copies the cluster keeps,
the sync mode (mirror: the host's exposed copy is kept identical, drift is
undone; on-activate: fetched when activated; manual), locked paths, where it
may be activated, and bandwidth and time windows for background sync:

  hold = "gpu=true"          # all, none, key=value or ID,ID,...
  min_copies = 2
  mode = "mirror"
  locked = ["/etc/app.conf"]
  activate = "all"
  bandwidth = "100M"         # bytes per second
  windows = ["01:00-05:00"]  # UTC

A host policy (set per host) says what the host accepts:

  quota = "500G"
  allow = ["base*", "web:*"]
  deny = ["test-*"]
  modes = ["on-activate", "manual"]
  windows = ["22:00-06:00"]

Where the host policy conflicts with the layer policy (a denied layer the
layer policy holds here, a quota too small, a refused mode, disjoint
windows) the host does not sync the layer and reports the conflict.`,
	}
	setLayer := &cobra.Command{
		Use:   "set-layer NAME[:TAG] FILE",
		Short: "Publish the layer again with a new layer policy",
		Args:  exactArgs(2, "a layer name and a policy file"),
		RunE: func(c *cobra.Command, args []string) error {
			b, err := os.ReadFile(args[1])
			if err != nil {
				return err
			}
			if _, err := policy.ParseLayer(b); err != nil {
				return usageError{fmt.Errorf("%s: %w", args[1], err)}
			}
			l, err := a.client().SetLayerPolicy(c.Context(), args[0], string(b))
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "policy of %s (%s) published\n", l.Name, l.CID)
			return nil
		},
	}
	setHost := &cobra.Command{
		Use:   "set-host FILE",
		Short: "Set this host's policy",
		Args:  exactArgs(1, "a policy file"),
		RunE: func(c *cobra.Command, args []string) error {
			b, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			if _, err := policy.ParseHost(b); err != nil {
				return usageError{fmt.Errorf("%s: %w", args[0], err)}
			}
			if err := a.client().SetHostPolicy(c.Context(), string(b)); err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, "host policy set")
			return nil
		},
	}
	var host string
	show := &cobra.Command{
		Use:   "show NAME[:TAG]",
		Short: "Print the effective policy of a layer on this host (or --host ID), or the conflict",
		Args:  exactArgs(1, "a layer name"),
		RunE: func(c *cobra.Command, args []string) error {
			r, err := a.client().PolicyShow(c.Context(), args[0], host)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(r)
			}
			fmt.Fprintf(a.stdout, "layer %s on host %s\n", r.Layer, r.Host)
			if r.Conflict != nil {
				return fmt.Errorf("conflict, not synced: %s", r.Conflict.Error())
			}
			e := r.Effective
			fmt.Fprintf(a.stdout, "  hold: %v\n  mode: %s\n  may activate: %v\n", e.Hold, e.Mode, e.MayActivate)
			if len(e.Locked) > 0 {
				fmt.Fprintf(a.stdout, "  locked: %s\n", strings.Join(e.Locked, ", "))
			}
			if e.Product != "" {
				fmt.Fprintf(a.stdout, "  product: %s (activation needs a seat)\n", e.Product)
			}
			if e.Bandwidth > 0 {
				fmt.Fprintf(a.stdout, "  bandwidth: %d B/s\n", e.Bandwidth)
			}
			for _, w := range e.Windows {
				fmt.Fprintf(a.stdout, "  window: %s UTC\n", w)
			}
			return nil
		},
	}
	show.Flags().StringVar(&host, "host", "", "peer id of another host (from its gossiped policy)")
	check := &cobra.Command{
		Use:   "check",
		Short: "List every host and layer pair in the cluster whose policies conflict; exit 1 if any",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			rs, err := a.client().PolicyCheck(c.Context())
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(rs)
			}
			if len(rs) == 0 {
				fmt.Fprintln(a.stdout, "no conflicts")
				return nil
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "LAYER\tHOST\tLAYER RULE\tHOST RULE")
			for _, r := range rs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Layer, r.Host, r.Conflict.LayerRule, r.Conflict.HostRule)
			}
			tw.Flush()
			return fmt.Errorf("%d conflicting host and layer pair(s)", len(rs))
		},
	}
	c.AddCommand(setLayer, setHost, show, check)
	return c
}

func (a *app) diffCmd() *cobra.Command {
	var host string
	c := &cobra.Command{
		Use:   "diff NAME[:TAG] [--host ID]",
		Short: "Show how a host's exposed view of a layer differs from the published layer; exit 1 if it does",
		Args:  exactArgs(1, "a layer name"),
		RunE: func(c *cobra.Command, args []string) error {
			r, err := a.client().Diff(c.Context(), args[0], host)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(r)
			}
			for _, ch := range r.Changes {
				fmt.Fprintf(a.stdout, "%-8s %s %s\n", ch.Kind, ch.Path, ch.Detail)
			}
			if len(r.Changes) > 0 {
				return fmt.Errorf("%s at %s differs from %s in %d path(s)", r.Layer, r.Path, r.CID, len(r.Changes))
			}
			fmt.Fprintf(a.stdout, "%s at %s is identical to %s\n", r.Layer, r.Path, r.CID)
			return nil
		},
	}
	c.Flags().StringVar(&host, "host", "", "peer id of another host to ask")
	return c
}
