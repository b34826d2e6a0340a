package main

import (
	"cmp"
	"fmt"
	"os"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/p2pimg/p2pimg/testnet"
)

func (a *app) testnetCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "testnet",
		Short: "Run a cluster of daemons on this machine, to try p2pimg before rolling it out",
		Long: `Run N daemons on this machine, each with its own data directory, socket,
host key and loopback port, all in one cluster (a generated PSK and members
list). Talk to node K with 'p2pimg --node K ...' or 'eval $(p2pimg testnet env K)'.`,
	}
	var n int
	var keep bool
	var opts testnet.UpOptions
	up := &cobra.Command{
		Use:   "up",
		Short: "Start N daemons",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			bin, err := os.Executable()
			if err != nil {
				return err
			}
			l, err := testnet.Up(c.Context(), bin, a.testnetDir, n, opts)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "testnet of %d nodes up in %s\n", len(l.Nodes), l.Dir)
			for _, nd := range l.Nodes {
				fmt.Fprintf(a.stdout, "  node %d  %s  p2pimg --node %d ...   (or: eval $(p2pimg testnet env %d))\n", nd.Index, nd.PeerID, nd.Index, nd.Index)
			}
			fmt.Fprintf(a.stdout, "activation paths of node K live under %s/nodeK/root; each node carries the label node=K\n", l.Dir)
			fmt.Fprintln(a.stdout, "stop it with: p2pimg testnet down")
			return nil
		},
	}
	up.Flags().IntVarP(&n, "nodes", "n", 3, "how many daemons")
	up.Flags().BoolVar(&opts.NetNS, "netns", false, "run each daemon in its own network namespace behind a veth link to a bridge (root only)")
	up.Flags().StringVar(&opts.Rate, "rate", "", "with --netns: limit each host's link with tc tbf, e.g. 400mbit")
	up.Flags().IntVar(&opts.Keepers, "keepers", 0, "nodes 1..K keep the licence seat table (default 3, or 1 with fewer nodes)")
	up.Flags().StringVar(&opts.SeatTTL, "seat-ttl", "", "seat lease length (default 30s)")
	down := &cobra.Command{
		Use:   "down",
		Short: "Stop every daemon and remove the testnet's directory",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			l, err := testnet.OpenLocal(a.testnetDir)
			if err != nil {
				return err
			}
			if err := l.Down(c.Context(), keep); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "testnet in %s is down\n", l.Dir)
			return nil
		},
	}
	down.Flags().BoolVar(&keep, "keep", false, "keep the directory (data and logs)")
	status := &cobra.Command{
		Use:   "status",
		Short: "Show each node: up or down, peers, layers",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			l, err := testnet.OpenLocal(a.testnetDir)
			if err != nil {
				return err
			}
			st := l.Status(c.Context())
			if a.json {
				return a.printJSON(st)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NODE\tSTATE\tPEERS\tLAYERS\tWEB\tPEER ID")
			for _, s := range st {
				state := "down"
				if s.Up {
					state = "up"
				}
				fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%s\t%s\n", s.Index, state, s.Peers, s.Layers, cmp.Or(s.Web, "-"), s.PeerID)
			}
			return tw.Flush()
		},
	}
	nodeArg := func(c *cobra.Command, args []string) (*testnet.Local, int, error) {
		k, err := strconv.Atoi(args[0])
		if err != nil {
			return nil, 0, usageError{fmt.Errorf("%s: %q is not a node number", c.CommandPath(), args[0])}
		}
		l, err := testnet.OpenLocal(a.testnetDir)
		return l, k, err
	}
	env := &cobra.Command{
		Use:   "env K",
		Short: "Print the shell line that points p2pimg at node K: eval $(p2pimg testnet env K)",
		Args:  exactArgs(1, "a node number"),
		RunE: func(c *cobra.Command, args []string) error {
			l, k, err := nodeArg(c, args)
			if err != nil {
				return err
			}
			s, err := l.Socket(k)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "export P2PIMG_SOCKET=%s P2PIMG_OPERATOR_KEY=%s\n", s, testnet.OperatorKey(l.Dir))
			return nil
		},
	}
	kill := &cobra.Command{
		Use:   "kill K",
		Short: "Kill node K with SIGKILL",
		Args:  exactArgs(1, "a node number"),
		RunE: func(c *cobra.Command, args []string) error {
			l, k, err := nodeArg(c, args)
			if err == nil {
				err = l.Kill(k)
			}
			return err
		},
	}
	restart := &cobra.Command{
		Use:   "restart K",
		Short: "Start node K again (stopping it first if it runs)",
		Args:  exactArgs(1, "a node number"),
		RunE: func(c *cobra.Command, args []string) error {
			l, k, err := nodeArg(c, args)
			if err == nil {
				err = l.Restart(c.Context(), k)
			}
			return err
		},
	}
	partition := &cobra.Command{
		Use:     "partition GROUP GROUP...",
		Short:   "Split the nodes into groups that cannot reach each other",
		Example: "  p2pimg testnet partition 1,2 3,4,5",
		Args:    minArgs(2, "two or more groups such as 1,2 3"),
		RunE: func(c *cobra.Command, args []string) error {
			var groups [][]int
			for _, s := range args {
				g, err := testnet.ParseGroup(s)
				if err != nil {
					return usageError{err}
				}
				groups = append(groups, g)
			}
			l, err := testnet.OpenLocal(a.testnetDir)
			if err != nil {
				return err
			}
			return l.Partition(c.Context(), groups)
		},
	}
	heal := &cobra.Command{
		Use:   "heal",
		Short: "Undo a partition",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			l, err := testnet.OpenLocal(a.testnetDir)
			if err != nil {
				return err
			}
			return l.Partition(c.Context(), nil)
		},
	}
	c.AddCommand(up, down, status, env, kill, restart, partition, heal)
	return c
}
