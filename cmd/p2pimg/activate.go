package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/node/gossip"
	"github.com/p2pimg/p2pimg/testnet"
)

// operatorKey finds the key that signs activations: --key, else
// $P2PIMG_OPERATOR_KEY, else (with --node) the local testnet's.
func (a *app) operatorKey(flag string) string {
	if flag != "" {
		return flag
	}
	if k := os.Getenv("P2PIMG_OPERATOR_KEY"); k != "" {
		return k
	}
	if a.node > 0 {
		if _, err := os.Stat(testnet.OperatorKey(a.testnetDir)); err == nil {
			return testnet.OperatorKey(a.testnetDir)
		}
	}
	return ""
}

func (a *app) activationCmd(op api.Op) *cobra.Command {
	var at, hosts, keyFile string
	var maps []string
	var wait, discard, lazy bool
	var timeout time.Duration
	use, short := "activate NAME[:TAG] --at PATH", "Make a layer live at PATH on a set of hosts, cluster-wide"
	long := short + `.

The request is signed (by an operator key from the cluster file: --key FILE or
$P2PIMG_OPERATOR_KEY; without one a host may only act on itself with
--hosts self) and gossiped. Each selected host fetches the layer if needed,
verifies it, and exposes it at PATH (under its --root). A selector that
matches no known host is refused and nothing is published. --wait follows
every selected host until it settles and fails if any host failed.`
	example := `  p2pimg activate web:2.1 --at /opt/web --hosts all --wait
  p2pimg activate web:2.1 --at /opt/web --hosts role=frontend
  p2pimg activate web:2.1 --at /opt/web --hosts 12D3KooW...,12D3KooW... --map /etc/web.conf=etc/web.conf
  p2pimg activate tools:1 --at /opt/tools --hosts self      # this host only, no operator key needed`
	if op == api.OpDeactivate {
		use, short = "deactivate NAME[:TAG]", "Undo an activation: PATH shows what was there before"
		long = short + `.

The request is signed like an activation (--key FILE or $P2PIMG_OPERATOR_KEY;
--hosts self needs no key) and gossiped. Each selected host takes the layer
away from its path: an overlay is unmounted, a materialized directory is
swapped back for what was there before, path maps are restored, and a seat
the layer held is released. A host whose view was written to refuses and
says how much changed, unless --discard-changes. --wait follows every
selected host until it is inactive and fails if any host failed.`
		example = `  p2pimg deactivate web:2.1 --wait
  p2pimg deactivate web:2.1 --hosts role=frontend
  p2pimg deactivate web:2.1 --hosts self --discard-changes`
	}
	c := &cobra.Command{
		Use:     use,
		Short:   short,
		Long:    long,
		Example: example,
		Args:    exactArgs(1, "a layer name"),
		RunE: func(c *cobra.Command, args []string) error {
			name, err := chunk.ParseName(args[0])
			if err != nil {
				return usageError{err}
			}
			if op == api.OpActivate && (at == "" || !filepath.IsAbs(at)) {
				return usageError{fmt.Errorf("activate: --at must be an absolute path, e.g. --at /opt/app")}
			}
			if hosts != "self" {
				if err := gossip.CheckSelector(hosts); err != nil {
					return usageError{fmt.Errorf("--%w", err)}
				}
			}
			cl := a.client()
			for _, m := range maps {
				if _, _, err := api.ParseMap(m); err != nil {
					return usageError{err}
				}
			}
			if discard {
				op = api.OpDeactivateDiscard
			}
			req := api.ActivateRequest{Layer: name.String(), At: filepath.Clean(at), Hosts: hosts, Maps: maps, Lazy: lazy, Op: op}
			if op.Deactivates() {
				req.At = ""
			}
			if kf := a.operatorKey(keyFile); kf != "" {
				key, err := cluster.LoadKeyFile(kf)
				if err != nil {
					return usageError{fmt.Errorf("operator key %s: not a key file made by 'p2pimg cluster operator-key -o FILE' (%v)", kf, err)}
				}
				cl = cl.WithOperator(key)
				id, err := cl.Resolve(c.Context(), name.String())
				if err != nil {
					return err
				}
				signedHosts := hosts
				if hosts == "self" { // signed by the operator: this host, by its id
					me, err := cl.Identity(c.Context())
					if err != nil {
						return err
					}
					signedHosts = me.PeerID
				}
				act, err := gossip.SignActivation(key, gossip.Activation{Layer: name.String(), CID: id, At: req.At, Hosts: signedHosts, Maps: req.Maps, Lazy: req.Lazy, Op: op, Time: time.Now().UnixNano()})
				if err != nil {
					return err
				}
				req = api.ActivateRequest{}
				req.Signed, _ = json.Marshal(act)
			}
			res, err := cl.Activate(c.Context(), req)
			if err != nil {
				return err
			}
			if !wait {
				if a.json {
					return a.printJSON(res)
				}
				fmt.Fprintf(a.stdout, "%s of %s published to %d known host(s); see `p2pimg status`\n", op, name, len(res.Targets))
				return nil
			}
			return a.waitSettled(c, name.String(), op, res, timeout)
		},
	}
	if op == api.OpDeactivate {
		c.Flags().BoolVar(&discard, "discard-changes", false, "deactivate even where the view was changed locally, throwing those changes away (without it such a host refuses and says how much changed)")
	}
	if op == api.OpActivate {
		c.Flags().StringVar(&at, "at", "", "absolute path where the layer appears on each host (under its --root)")
		c.Flags().BoolVar(&lazy, "lazy", false, "hosts exposing it through FUSE make it active once its manifest is there, fetching chunks as they are read (the rest in the background)")
		c.Flags().StringArrayVar(&maps, "map", nil, "SRC=DST: while active, host path SRC resolves to DST inside the layer (bind mount or symlink; repeatable)")
	}
	c.Flags().StringVar(&hosts, "hosts", "all", "which hosts: all, ID,ID,..., key=value (a label), or self")
	c.Flags().StringVar(&keyFile, "key", "", "operator key file (default $P2PIMG_OPERATOR_KEY)")
	c.Flags().BoolVar(&wait, "wait", false, "follow every selected host until it settles; fail if any failed")
	c.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "with --wait: give up after this long")
	return c
}

// waitSettled follows the selected hosts' states for this activation.
func (a *app) waitSettled(c *cobra.Command, layer string, op api.Op, res api.ActivateResult, timeout time.Duration) error {
	want := map[api.State]bool{api.StateActive: true}
	if op.Deactivates() {
		want = map[api.State]bool{api.StateInactive: true}
	}
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	last := ""
	for {
		states, err := a.client().Activations(c.Context())
		if err != nil {
			return err
		}
		byHost := map[string]api.HostActivation{}
		for _, s := range states {
			if s.Layer == layer && s.Time == res.Time {
				byHost[s.Host] = s
			}
		}
		var pending, failed []string
		var lines []string
		for _, h := range res.Targets {
			s, ok := byHost[h]
			st, name := api.StateRequested, short(h)
			if ok {
				st, name = s.State, hostName(s)
			}
			switch {
			case ok && want[s.State]:
			case ok && s.State == api.StateFailed:
				failed = append(failed, fmt.Sprintf("%s: %s", name, s.Detail))
			default:
				pending = append(pending, name)
			}
			lines = append(lines, fmt.Sprintf("%s=%s", name, st))
		}
		sort.Strings(lines)
		if l := strings.Join(lines, " "); l != last && !a.json {
			fmt.Fprintln(a.stderr, l)
			last = l
		}
		if len(pending) == 0 {
			if len(failed) > 0 {
				return fmt.Errorf("%s of %s failed on %d host(s): %s", op, layer, len(failed), strings.Join(failed, "; "))
			}
			if a.json {
				return a.printJSON(byHost)
			}
			fmt.Fprintf(a.stdout, "%s of %s settled on all %d host(s)\n", op, layer, len(res.Targets))
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s of %s: not settled after %s on: %s", op, layer, timeout, strings.Join(pending, ", "))
		}
		select {
		case <-c.Context().Done():
			return c.Context().Err()
		case <-tick.C:
		}
	}
}
