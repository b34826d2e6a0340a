package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/p2pimg/p2pimg/node/cluster"
)

// seatFlags are cluster init's flags beyond members and operators: who
// may publish, who keeps the seat table, whose licences count.
type seatFlags struct {
	publishers, keepers, issuers []string
	ttl                          string
}

func (f *seatFlags) add(c *cobra.Command) {
	c.Flags().StringSliceVar(&f.publishers, "publishers", nil, "peer `IDS` whose layer announcements are accepted (default: every member)")
	c.Flags().StringSliceVar(&f.keepers, "keepers", nil, "peer `IDS` of the 1, 3 or 5 members that keep the seat table (none: no licence seats)")
	c.Flags().StringSliceVar(&f.issuers, "issuers", nil, "licence issuer public `KEYS` (from 'p2pimg license issuer-key')")
	c.Flags().StringVar(&f.ttl, "seat-ttl", "", "seat lease `DURATION` (default 30s)")
}

// apply sets the flags on a new cluster config and checks it.
func (f *seatFlags) apply(cc *cluster.Config) error {
	cc.Publishers, cc.Keepers, cc.Issuers, cc.SeatTTL = f.publishers, f.keepers, f.issuers, f.ttl
	return cc.Check()
}

// clusterSummary is `cluster show --json`: the file without its secret.
type clusterSummary struct {
	File       string   `json:"file"`
	Name       string   `json:"name"`
	PSK        string   `json:"psk"` // "none", or the key's fingerprint
	Open       bool     `json:"open"`
	Members    []string `json:"members"`
	Publishers []string `json:"publishers"`
	Operators  []string `json:"operators"`
	Keepers    []string `json:"keepers"`
	Issuers    []string `json:"issuers"`
	SeatTTL    string   `json:"seat_ttl"`
	SeatMargin string   `json:"seat_margin"`
}

func summarizeCluster(path string, cc *cluster.Config) clusterSummary {
	s := clusterSummary{File: path, Name: cc.Name, PSK: "none", Open: cc.Open(),
		Members: nonNilStrings(cc.Members), Publishers: nonNilStrings(cc.Publishers), Operators: nonNilStrings(cc.Operators),
		Keepers: nonNilStrings(cc.Keepers), Issuers: nonNilStrings(cc.Issuers)}
	if k := cc.NetworkKey(); k != nil {
		sum := sha256.Sum256(k)
		s.PSK = "set (fingerprint " + hex.EncodeToString(sum[:4]) + ")"
	}
	r := cc.SeatRules()
	s.SeatTTL, s.SeatMargin = r.TTL.String(), r.Margin.String()
	return s
}

func nonNilStrings(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// defaultClusterFile is where the packaged daemon's config points.
const defaultClusterFile = "/etc/p2pimg/cluster.toml"

func (a *app) clusterShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "show [FILE]",
		Short: "Show a cluster file: name, members, publishers, operators, keepers, issuers (the PSK only by fingerprint)",
		Long: `Show a cluster file (default ` + defaultClusterFile + `) after checking it: who
may join, publish, activate and keep seats, which licence issuers count.
The private-network key is never printed: only whether there is one and a
fingerprint to compare between hosts.`,
		Example: `  p2pimg cluster show
  p2pimg cluster show cluster.toml --json | jq .keepers`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			path := defaultClusterFile
			if len(args) == 1 {
				path = args[0]
			}
			cc, err := cluster.Load(path)
			if err != nil {
				return err
			}
			s := summarizeCluster(path, cc)
			if a.json {
				return a.printJSON(s)
			}
			list := func(ids []string, none string) string {
				if len(ids) == 0 {
					return none
				}
				return fmt.Sprintf("%d: %s", len(ids), strings.Join(ids, ", "))
			}
			fmt.Fprintf(a.stdout, "file        %s\nname        %s\npsk         %s\n", s.File, s.Name, s.PSK)
			fmt.Fprintf(a.stdout, "members     %s\n", list(s.Members, "none: an open cluster (daemons refuse it without --open)"))
			fmt.Fprintf(a.stdout, "publishers  %s\n", list(s.Publishers, "every member"))
			fmt.Fprintf(a.stdout, "operators   %s\n", list(s.Operators, "none: hosts act only on activations of their own"))
			fmt.Fprintf(a.stdout, "keepers     %s\n", list(s.Keepers, "none: no licence seats"))
			fmt.Fprintf(a.stdout, "issuers     %s\n", list(s.Issuers, "none"))
			fmt.Fprintf(a.stdout, "seat lease  %s (margin %s)\n", s.SeatTTL, s.SeatMargin)
			return nil
		},
	}
}

func (a *app) clusterValidateCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "validate FILE",
		Short:   "Check a cluster file before copying it to the hosts; exit 1 naming the first problem",
		Example: `  p2pimg cluster validate new-cluster.toml && scp new-cluster.toml hv-07:/etc/p2pimg/cluster.toml`,
		Args:    exactArgs(1, "a cluster file"),
		RunE: func(c *cobra.Command, args []string) error {
			cc, err := cluster.Load(args[0])
			if err != nil {
				return err
			}
			s := summarizeCluster(args[0], cc)
			if a.json {
				return a.printJSON(s)
			}
			fmt.Fprintf(a.stdout, "%s: ok: cluster %q, %d member(s), %d keeper(s), %d operator(s), %d issuer(s)\n",
				args[0], s.Name, len(s.Members), len(s.Keepers), len(s.Operators), len(s.Issuers))
			if s.Open {
				fmt.Fprintf(a.stderr, "warning: %s has no members list: an open cluster, which daemons refuse without --open\n", args[0])
			}
			return nil
		},
	}
}
