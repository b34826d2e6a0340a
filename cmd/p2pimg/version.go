package main

import (
	"fmt"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/p2pimg/p2pimg/node/api"
)

// versionInfo is `p2pimg version --json`.
type versionInfo struct {
	Client struct {
		Version string `json:"version"`
		Go      string `json:"go"`
		API     string `json:"api"`
		Schema  int    `json:"schema"` // of the fleet document (docs/json.md)
	} `json:"client"`
	Daemon struct {
		Version   string    `json:"version"`
		PID       int       `json:"pid"`
		Started   time.Time `json:"started"`
		DataDir   string    `json:"data_dir"`
		Cluster   string    `json:"cluster"`
		Protocols []string  `json:"protocols"`
	} `json:"daemon"`
}

func (a *app) versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Show the versions of this client and of the daemon, and the protocols the daemon speaks",
		Long: `Show this client's version, the local API it speaks, and the daemon's
version and the p2pimg protocols it speaks with peers (a host speaks with
another only over protocols both list). The client's part is printed even
when no daemon answers; the command then fails.`,
		Example: `  p2pimg version
  p2pimg version --json | jq -r .daemon.version`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			var v versionInfo
			v.Client.Version, v.Client.Go, v.Client.API, v.Client.Schema = version, runtime.Version(), api.Version, api.FleetSchema
			if !a.json {
				fmt.Fprintf(a.stdout, "client     %s (%s, API %s)\n", v.Client.Version, v.Client.Go, v.Client.API)
			}
			cl := a.client()
			st, err := cl.Status(c.Context())
			if err != nil {
				return err
			}
			id, err := cl.Identity(c.Context())
			if err != nil {
				return err
			}
			d := &v.Daemon
			d.Version, d.PID, d.Started, d.DataDir, d.Cluster, d.Protocols = st.Version, st.PID, st.Started, st.DataDir, id.Cluster, id.Protocols
			if a.json {
				return a.printJSON(v)
			}
			fmt.Fprintf(a.stdout, "daemon     %s (pid %d, up %s, data %s, cluster %q)\n", d.Version, d.PID,
				time.Since(d.Started).Round(time.Second), d.DataDir, d.Cluster)
			fmt.Fprintf(a.stdout, "protocols  %s\n", strings.Join(d.Protocols, " "))
			return nil
		},
	}
}
