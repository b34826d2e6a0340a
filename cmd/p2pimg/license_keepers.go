package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/node/seats"
)

func (a *app) keepersCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "keepers",
		Short: "List the keepers of the seat table, or add and remove one while the cluster runs",
		Long: `The keepers are the hosts whose Raft group holds the seat table. The cluster
file's keepers = [...] seeds the group's first configuration; after that the
Raft configuration is the truth, changed one host at a time by an operator:
'keepers add HOST' has the leader start HOST's keeper (it copies the log or
a snapshot from the leader) and adds it as a voter; 'keepers remove HOST'
drops one (a dead one too) from the configuration. Each change is signed by
an operator key (--key FILE or $P2PIMG_OPERATOR_KEY) and applies only to
the configuration it was made for. Replace a dead keeper by adding its
successor first, then removing it: a majority stays reachable throughout.`,
	}
	c.AddCommand(a.keepersLsCmd(), a.keepersChangeCmd(seats.KeeperAdd), a.keepersChangeCmd(seats.KeeperRemove))
	return c
}

func (a *app) keepersLsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: "List the keepers: the Raft configuration beside the cluster file's list",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			l, err := a.client().Keepers(c.Context())
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(l)
			}
			a.printKeepers(l)
			return nil
		},
	}
}

func (a *app) printKeepers(l api.KeeperList) {
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEEPER\tRAFT\tFILE\tLEADER\tCONNECTED")
	yes := map[bool]string{true: "yes", false: "no"}
	for _, k := range l.Keepers {
		raft := k.Raft
		if raft == "" {
			raft = "-"
		}
		lead := ""
		if k.Leader {
			lead = "*"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", k.ID, raft, yes[k.InFile], lead, yes[k.Connected])
	}
	tw.Flush()
	fmt.Fprintf(a.stdout, "configuration %d\n", l.Index)
	if l.Differs {
		fmt.Fprintln(a.stdout, "the cluster file's keepers differ from the Raft configuration, which is the truth; update keepers = [...] for hosts that join later")
	}
}

func (a *app) keepersChangeCmd(op string) *cobra.Command {
	var keyFile string
	short := "Add a host to the keepers: it starts its keeper and copies the seat table from the leader"
	if op == seats.KeeperRemove {
		short = "Remove a host from the keepers (a dead one too)"
	}
	c := &cobra.Command{
		Use:   op + " HOST",
		Short: short,
		Args:  exactArgs(1, "a host's peer id"),
		RunE: func(c *cobra.Command, args []string) error {
			kf := a.operatorKey(keyFile)
			if kf == "" {
				return usageError{fmt.Errorf("keepers %s: only an operator may change the keepers: give an operator key with --key FILE or $P2PIMG_OPERATOR_KEY", op)}
			}
			key, err := cluster.LoadKeyFile(kf)
			if err != nil {
				return err
			}
			cl := a.client()
			id, err := cl.Identity(c.Context())
			if err != nil {
				return err
			}
			now, err := cl.Keepers(c.Context())
			if err != nil {
				return err
			}
			ch, err := seats.NewKeeperChange(id.Cluster, op, strings.TrimSpace(args[0]), now)
			if err != nil {
				return err
			}
			if ch, err = seats.SignKeeperChange(key, ch); err != nil {
				return err
			}
			signed, _ := json.Marshal(ch)
			l, err := cl.ChangeKeepers(c.Context(), signed)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(l)
			}
			verb := map[string]string{seats.KeeperAdd: "added", seats.KeeperRemove: "removed"}[op]
			fmt.Fprintf(a.stdout, "%s %s; the keepers are now:\n", verb, ch.Host)
			a.printKeepers(l)
			if n := len(ch.Keepers); n%2 == 0 {
				fmt.Fprintf(a.stdout, "%d keepers: a majority is %d, so one more host down stops seat decisions; make it odd again (add or remove one)\n", n, n/2+1)
			}
			return nil
		},
	}
	c.Flags().StringVar(&keyFile, "key", "", "operator key file (default $P2PIMG_OPERATOR_KEY)")
	return c
}
