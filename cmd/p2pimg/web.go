package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"
)

func (a *app) webCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "web",
		Short: "Print the URL of the daemon's web view of the fleet",
		Long: `Print the URL of the daemon's web view: the fleet as a matrix of layers x
hosts, transfers in flight, seats and each host's store, updated live. The
daemon serves it only when started with --http HOST:PORT.`,
		Example: `  p2pimg daemon --http 127.0.0.1:8080 &
  p2pimg web          # http://127.0.0.1:8080/`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			st, err := a.client().Status(c.Context())
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(map[string]string{"web": st.Web})
			}
			if st.Web == "" {
				return errors.New("web: the daemon serves no web view; start it with --http HOST:PORT (e.g. --http 127.0.0.1:8080)")
			}
			fmt.Fprintln(a.stdout, st.Web)
			return nil
		},
	}
}
