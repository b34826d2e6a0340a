package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/client"
	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/testnet"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// DefaultDataDir is where a daemon keeps its store unless told otherwise.
const DefaultDataDir = "/var/lib/p2pimg"

// app is what every command shares: the output streams and global flags.
type app struct {
	stdout, stderr io.Writer
	socket         string
	json           bool
	node           int    // --node K: talk to testnet node K
	testnetDir     string // --testnet-dir
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	a := &app{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "p2pimg",
		Short: "Peer-to-peer replication of VM and container images across a fleet",
		Long: `p2pimg keeps VM and container images identical across hypervisor hosts
without a central image server. Run one daemon per host (p2pimg daemon); every
other command talks to the local daemon over its socket.`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%s: %w (see `%s --help`)", c.CommandPath(), err, c.CommandPath())}
	})
	root.PersistentFlags().StringVar(&a.socket, "socket", "", "daemon API socket (default $P2PIMG_SOCKET or "+filepath.Join(DefaultDataDir, "p2pimg.sock")+")")
	root.PersistentFlags().BoolVar(&a.json, "json", false, "print machine-readable JSON")
	root.PersistentFlags().IntVar(&a.node, "node", 0, "talk to node `K` of the local testnet (see 'p2pimg testnet --help')")
	root.PersistentFlags().StringVar(&a.testnetDir, "testnet-dir", testnet.DefaultDir(), "the local testnet's directory")
	root.AddCommand(
		a.daemonCmd(),
		a.addCmd(), a.layersCmd(), a.checkoutCmd(), a.rmCmd(),
		a.gcCmd(), a.verifyCmd(), a.statsCmd(), a.commonCmd(),
		a.fetchCmd(), a.idCmd(), a.peersCmd(), a.clusterCmd(), a.identityCmd(), a.testnetCmd(),
		a.activationCmd(api.OpActivate), a.activationCmd(api.OpDeactivate), a.statusCmd(),
		a.licenseCmd(), a.policyCmd(), a.diffCmd(), a.splitCmd(), a.commitCmd(), a.rebaseCmd(), a.importCmd(), a.registryCmd(), a.webCmd(), a.versionCmd(), a.doctorCmd(),
	)
	addExamples(root)
	return root
}

// client returns a client for the socket chosen by flag (--socket, or
// --node K of the local testnet), environment or default.
func (a *app) client() *client.Client {
	s := a.socket
	if a.node > 0 && s == "" {
		if l, err := testnet.OpenLocal(a.testnetDir); err == nil {
			s, _ = l.Socket(a.node)
		}
		if s == "" {
			s = filepath.Join(a.testnetDir, fmt.Sprintf("node%d", a.node), "p2pimg.sock")
		}
	}
	if s == "" {
		s = os.Getenv("P2PIMG_SOCKET")
	}
	if s == "" {
		s = filepath.Join(DefaultDataDir, "p2pimg.sock")
	}
	cl := client.New(s)
	// An operator key gives a caller other than root its rights on the
	// daemon: every request is signed with it.
	if kf := a.operatorKey(""); kf != "" {
		k, err := cluster.LoadKeyFile(kf)
		if err != nil {
			fmt.Fprintf(a.stderr, "warning: operator key not used: %v\n", err)
			return cl
		}
		cl = cl.WithOperator(k)
	}
	return cl
}

func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// exactArgs is cobra.ExactArgs with an error that names what is expected.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError{fmt.Errorf("%s takes %s (got %d argument(s)); see `%s --help`", c.CommandPath(), what, len(args), c.CommandPath())}
		}
		return nil
	}
}

// minArgs is cobra.MinimumNArgs with an error that names what is expected.
func minArgs(n int, what string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) < n {
			return usageError{fmt.Errorf("%s takes %s (got %d argument(s)); see `%s --help`", c.CommandPath(), what, len(args), c.CommandPath())}
		}
		return nil
	}
}
