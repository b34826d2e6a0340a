package main

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/cluster"
)

func (a *app) clusterCmd() *cobra.Command {
	c := &cobra.Command{Use: "cluster", Short: "Make and inspect cluster files"}
	var name, out string
	var members, operators []string
	var seats seatFlags
	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Write a new cluster file with a fresh private-network key",
		Long: `Write a new cluster file: the cluster's name, a fresh private-network key
(PSK: only hosts with it can connect; TCP only) and, optionally, the members
allowed in (peer ids, from 'p2pimg identity --data DIR' on each host). Copy
the same file to every host and start each daemon with --cluster FILE.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			cc, err := cluster.New(name, members, operators)
			if err == nil {
				err = seats.apply(cc)
			}
			if err != nil {
				return usageError{err}
			}
			if err := cc.Write(out); err != nil {
				return fmt.Errorf("write cluster file: %w", err)
			}
			fmt.Fprintf(a.stdout, "wrote %s (cluster %q, %d members%s)\n", out, name, len(members), map[bool]string{true: ", open: any host with the PSK may join", false: ""}[len(members) == 0])
			return nil
		},
	}
	initCmd.Flags().StringVar(&name, "name", "default", "cluster name")
	initCmd.Flags().StringVarP(&out, "out", "o", "cluster.toml", "file to write (must not exist)")
	initCmd.Flags().StringSliceVar(&members, "members", nil, "peer ids allowed in the cluster (comma-separated)")
	seats.add(initCmd)
	var keyOut string
	opKey := &cobra.Command{
		Use:   "operator-key",
		Short: "Make an operator key (it signs activations) and print the id to list under operators",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			id, err := cluster.NewKeyFile(keyOut)
			if err != nil {
				return fmt.Errorf("operator key: %w", err)
			}
			fmt.Fprintln(a.stdout, id)
			fmt.Fprintf(a.stderr, "wrote %s; add %s to operators = [...] in the cluster file, and keep the key file off the hosts\n", keyOut, id)
			return nil
		},
	}
	opKey.Flags().StringVarP(&keyOut, "out", "o", "operator.key", "key file to write (must not exist)")
	initCmd.Flags().StringSliceVar(&operators, "operators", nil, "operator `IDS` (from 'p2pimg cluster operator-key') whose activations hosts obey")
	forget := &cobra.Command{
		Use:   "forget HOST",
		Short: "Drop a host that is gone for good from this daemon's view of the cluster",
		Long: `Drop what HOST (a peer id, as in 'p2pimg status') said of itself from this
daemon's catalogue: its holdings, activation states, labels and policy, so
status and 'layers --all' stop showing it. Mappings and activations it signed
stay. A host still heard from is refused: stop it first.`,
		Args: exactArgs(1, "a host's peer id"),
		RunE: func(c *cobra.Command, args []string) error {
			if err := a.client().Forget(c.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "forgot %s\n", args[0])
			return nil
		},
	}
	c.AddCommand(initCmd, opKey, forget, a.clusterShowCmd(), a.clusterValidateCmd(), a.clusterReloadCmd())
	return c
}

func (a *app) identityCmd() *cobra.Command {
	var data string
	c := &cobra.Command{
		Use:   "identity",
		Short: "Print this host's peer id (creating its key if needed), without a daemon",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			k, err := cluster.LoadIdentity(data)
			if err != nil {
				return err
			}
			id, err := cluster.PeerID(k)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(map[string]string{"peer_id": id.String()})
			}
			fmt.Fprintln(a.stdout, id)
			return nil
		},
	}
	c.Flags().StringVar(&data, "data", DefaultDataDir, "data directory")
	return c
}

func (a *app) idCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "id",
		Short: "Show the daemon's peer id and addresses",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			id, err := a.client().Identity(c.Context())
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(id)
			}
			fmt.Fprintf(a.stdout, "peer id  %s\ncluster  %s\n", id.PeerID, id.Cluster)
			for _, ad := range id.Addrs {
				fmt.Fprintf(a.stdout, "address  %s\n", ad)
			}
			return nil
		},
	}
}

func (a *app) peersCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "peers",
		Short: "List connected peers with latency and chunk bytes in and out",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			ps, err := a.client().Peers(c.Context())
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(ps)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PEER\tLATENCY\tIN\tOUT\tADDRESS")
			for _, p := range ps {
				fmt.Fprintf(tw, "%s\t%.1fms\t%s\t%s\t%s\n", p.PeerID, p.LatencyMS, humanize.IBytes(uint64(p.BytesIn)), humanize.IBytes(uint64(p.BytesOut)), strings.Join(p.Addrs, ","))
			}
			return tw.Flush()
		},
	}
}

func (a *app) fetchCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "fetch NAME[:TAG]",
		Short: "Fetch a layer from the cluster: only the chunks this host lacks, from every peer that has them",
		Long: `Fetch a layer named in the cluster catalogue (see 'p2pimg layers --all'):
the missing chunks come from every peer that has them, each verified against
its CID before it is stored. An interrupted fetch resumes where it stopped.`,
		Args: exactArgs(1, "a layer name"),
		RunE: func(c *cobra.Command, args []string) error {
			if _, err := chunk.ParseName(args[0]); err != nil {
				return usageError{err}
			}
			on, done := a.events("fetch " + args[0])
			start := time.Now()
			res, err := a.client().Fetch(c.Context(), args[0], on)
			done()
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(res)
			}
			el := time.Since(start)
			fmt.Fprintf(a.stdout, "%s complete: %s; fetched %d chunks (%s) from %d peer(s) in %s (%s/s)\n",
				res.Layer.Name, humanize.IBytes(uint64(res.Layer.Size)), res.FetchedChunks, humanize.IBytes(uint64(res.FetchedBytes)),
				len(res.Peers), el.Round(time.Millisecond), humanize.IBytes(uint64(float64(res.FetchedBytes)/el.Seconds())))
			return nil
		},
	}
}

// printCatalog shows `layers --all`.
func (a *app) printCatalog(c *cobra.Command) error {
	cl, err := a.client().Catalog(c.Context())
	if err != nil {
		return err
	}
	if a.json {
		return a.printJSON(cl)
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSIZE\tCOMPLETE\tPARTIAL\tPUBLISHER\tCID")
	for _, l := range cl {
		var comp, part []string
		for p, st := range l.Holders {
			name := short(p)
			if slices.Contains(l.Unreachable, p) {
				name += "(unreachable)"
			}
			if st == "complete" {
				comp = append(comp, name)
			} else {
				part = append(part, name)
			}
		}
		sort.Strings(comp)
		sort.Strings(part)
		fmt.Fprintf(tw, "%s\t%s\t%d %s\t%d %s\t%s\t%s\n", l.Name, humanize.IBytes(uint64(l.Size)), len(comp), strings.Join(comp, ","), len(part), strings.Join(part, ","), short(l.Publisher), l.CID)
	}
	return tw.Flush()
}

func short(id string) string {
	if len(id) > 12 {
		return "…" + id[len(id)-8:]
	}
	return id
}
