package main

import "github.com/spf13/cobra"

// examples are the help examples of the commands that do not set their
// own, by command path (kept here in one table so every command has some;
// TestEveryCommandHasExamples checks it).
var examples = map[string]string{
	"p2pimg checkout": `  p2pimg checkout web:2.1 /srv/web
  p2pimg checkout web:2.1 /srv/web --force        # replace what is there`,
	"p2pimg cluster forget":       `  p2pimg cluster forget 12D3KooWQx...             # a host retired for good (stop it first)`,
	"p2pimg cluster init":         `  p2pimg cluster init --name prod -o cluster.toml --members 12D3KooW...,12D3KooW... --operators 12D3KooW...`,
	"p2pimg cluster operator-key": `  p2pimg cluster operator-key -o ~/.p2pimg/op.key   # prints the id for operators = [...]`,
	"p2pimg commit":               `  p2pimg commit --base ubuntu:24.04 --upper /var/lib/ctr/upper app:7`,
	"p2pimg common": `  p2pimg common win2022:a win2022:b
  p2pimg common web:1 web:2 api:1 --json`,
	"p2pimg daemon": `  p2pimg daemon --data /var/lib/p2pimg --cluster /etc/p2pimg/cluster.toml --label rack=r12
  p2pimg daemon --config /etc/p2pimg/daemon.toml --http 127.0.0.1:8080
  p2pimg daemon --data /tmp/try --http 127.0.0.1:0 --name lab-1   # the web view on a free port`,
	"p2pimg diff": `  p2pimg diff web:2.1                              # this host's view against the layer
  p2pimg diff web:2.1 --host 12D3KooWQx...         # another host's`,
	"p2pimg fetch": `  p2pimg fetch win2022:2026-11
  p2pimg fetch web:2.1 --json | jq .peers`,
	"p2pimg gc":       `  p2pimg gc`,
	"p2pimg id":       `  p2pimg id --json | jq -r .peer_id`,
	"p2pimg identity": `  p2pimg identity --data /var/lib/p2pimg         # the id to list under members, before the first start`,
	"p2pimg import": `  docker save alpine:3.20 -o alpine.tar && p2pimg import alpine.tar
  p2pimg import ./oci-layout --name app:7`,
	"p2pimg layers": `  p2pimg layers
  p2pimg layers --all                              # the cluster's, with their holders`,
	"p2pimg license check":          `  p2pimg license check 42 && start-vm vm-17`,
	"p2pimg license claim":          `  p2pimg license claim winsrv --for vm-17 --wait --timeout 2m`,
	"p2pimg license install":        `  p2pimg license install winsrv.lic`,
	"p2pimg license issue":          `  p2pimg license issue --key issuer.key --product winsrv --seats 40 --share 4 --expires 2027-12-31 > winsrv.lic`,
	"p2pimg license keepers add":    `  P2PIMG_OPERATOR_KEY=/etc/p2pimg/operator.key p2pimg license keepers add 12D3KooWNew...`,
	"p2pimg license keepers ls":     `  p2pimg license keepers ls --json`,
	"p2pimg license keepers remove": `  P2PIMG_OPERATOR_KEY=/etc/p2pimg/operator.key p2pimg license keepers remove 12D3KooWDead...`,
	"p2pimg license ls":             `  p2pimg license ls --json | jq '.licenses[] | {product, free}'`,
	"p2pimg license release": `  p2pimg license release winsrv --for vm-17
  p2pimg license release --token 42`,
	"p2pimg peers":            `  p2pimg peers`,
	"p2pimg policy check":     `  p2pimg policy check`,
	"p2pimg policy set-host":  `  p2pimg policy set-host /etc/p2pimg/host-policy.toml`,
	"p2pimg policy set-layer": `  p2pimg policy set-layer web:2.1 web-policy.toml`,
	"p2pimg policy show":      `  p2pimg policy show web:2.1 --host 12D3KooWQx...`,
	"p2pimg rebase":           `  p2pimg rebase app:7 --onto ubuntu:24.04.1`,
	"p2pimg registry hosts":   `  p2pimg registry hosts containerd --mirror 127.0.0.1:5000 --dir /etc/containerd/certs.d`,
	"p2pimg rm":               `  p2pimg rm web:2.0 && p2pimg gc`,
	"p2pimg split":            `  p2pimg split win2022:a win2022:b --common win2022-base:1`,
	"p2pimg stats":            `  p2pimg stats`,
	"p2pimg verify":           `  p2pimg verify`,
	"p2pimg testnet down": `  p2pimg testnet down
  p2pimg testnet down --keep                       # keep data and logs`,
	"p2pimg testnet env":     `  eval $(p2pimg testnet env 2)`,
	"p2pimg testnet heal":    `  p2pimg testnet heal`,
	"p2pimg testnet kill":    `  p2pimg testnet kill 2`,
	"p2pimg testnet restart": `  p2pimg testnet restart 2`,
	"p2pimg testnet status":  `  p2pimg testnet status`,
	"p2pimg testnet up": `  p2pimg testnet up -n 3
  p2pimg testnet up -n 16 --netns --rate 50mbit    # root: each node behind a shaped link`,
}

// addExamples sets the examples above on the commands under c that have none.
func addExamples(c *cobra.Command) {
	if c.Example == "" {
		c.Example = examples[c.CommandPath()]
	}
	for _, sub := range c.Commands() {
		addExamples(sub)
	}
}
