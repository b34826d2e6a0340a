package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func (a *app) clusterReloadCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "reload",
		Short: "Make the daemon read its cluster, members and PSK files again (as SIGHUP does)",
		Long: `Make the daemon read the files it was started with (--cluster, --members,
--psk) again and apply their members, publishers, operators and grants at
once: hosts no longer members are disconnected and refused, hosts added
may connect. The files are checked first; a file with an error is refused
and the daemon keeps its old config. A change of name, psk, keepers,
issuers, seat_ttl or seat_margin cannot be applied to a running daemon
(a libp2p private network is fixed when the host starts): the reload is
refused naming the fields, and the daemon needs a restart for them.
Needs the cluster right (root, or a grant in the cluster file).`,
		Example: `  p2pimg cluster reload
  sudo systemctl reload p2pimg     # the same, by SIGHUP
  p2pimg cluster reload --json | jq .disconnected`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			r, err := a.client().ReloadCluster(c.Context())
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(r)
			}
			members := fmt.Sprintf("%d member(s)", r.Members)
			if r.Members == 0 {
				members = "an open cluster"
			}
			fmt.Fprintf(a.stdout, "reloaded: %s; disconnected %d peer(s) no longer members\n", members, len(r.Disconnected))
			for _, p := range r.Disconnected {
				fmt.Fprintf(a.stdout, "  %s\n", p)
			}
			return nil
		},
	}
}
