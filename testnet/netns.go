package testnet

import (
	"fmt"
	"os/exec"
	"strings"
)

// NetNS is a set of hosts in their own network namespaces, joined by veth
// pairs to a bridge that lives in a namespace of its own, each host's link
// shaped with tc tbf in both directions so the hosts behave like machines
// with NICs. The addresses exist only inside these namespaces: nothing
// leaves the machine. Needs root.
type NetNS struct {
	Prefix string // namespace names: PREFIX0.., PREFIXbr
	Subnet string // first three octets with a dot, e.g. "10.234.78."
	Hosts  int
	Rate   string // e.g. 400mbit; empty = unshaped
}

// NS is host i's namespace.
func (n NetNS) NS(i int) string { return fmt.Sprintf("%s%d", n.Prefix, i) }

// Addr is host i's address.
func (n NetNS) Addr(i int) string { return fmt.Sprintf("%s%d", n.Subnet, i+1) }

// Exec prefixes a command so it runs in host i's namespace.
func (n NetNS) Exec(i int, cmd ...string) []string {
	return append([]string{"ip", "netns", "exec", n.NS(i)}, cmd...)
}

func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Up makes the namespaces, links and shaping (removing leftovers of an
// earlier run with the same prefix first).
func (n NetNS) Up() error {
	n.Down()
	br := n.Prefix + "br"
	steps := [][]string{
		{"ip", "netns", "add", br},
		{"ip", "-n", br, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", br, "link", "set", "br0", "up"},
	}
	for i := range n.Hosts {
		h, a, b := n.NS(i), fmt.Sprintf("v%da", i), fmt.Sprintf("v%db", i)
		steps = append(steps,
			[]string{"ip", "netns", "add", h},
			[]string{"ip", "-n", h, "link", "set", "lo", "up"},
			[]string{"ip", "link", "add", a, "netns", h, "type", "veth", "peer", "name", b, "netns", br},
			[]string{"ip", "-n", h, "addr", "add", n.Addr(i) + "/24", "dev", a},
			[]string{"ip", "-n", h, "link", "set", a, "up"},
			[]string{"ip", "-n", br, "link", "set", b, "master", "br0"},
			[]string{"ip", "-n", br, "link", "set", b, "up"},
		)
		if n.Rate != "" { // upload on the host side, download on the bridge side
			steps = append(steps,
				[]string{"ip", "netns", "exec", h, "tc", "qdisc", "add", "dev", a, "root", "tbf", "rate", n.Rate, "burst", "512kb", "latency", "100ms"},
				[]string{"ip", "netns", "exec", br, "tc", "qdisc", "add", "dev", b, "root", "tbf", "rate", n.Rate, "burst", "512kb", "latency", "100ms"},
			)
		}
	}
	for _, s := range steps {
		if err := run(s...); err != nil {
			n.Down()
			return err
		}
	}
	return nil
}

// Down removes the namespaces (and with them the links and shaping).
func (n NetNS) Down() {
	for i := range n.Hosts {
		exec.Command("ip", "netns", "del", n.NS(i)).Run()
	}
	exec.Command("ip", "netns", "del", n.Prefix+"br").Run()
}

// Exists reports whether any of the namespaces is still there.
func (n NetNS) Exists() bool {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, n.Prefix) {
			return true
		}
	}
	return false
}

// Blackhole makes host i drop every packet to addrs, replacing the
// blackholes it had; no addrs heals.
func (n NetNS) Blackhole(i int, addrs []string) error {
	exec.Command("ip", "-n", n.NS(i), "route", "flush", "type", "blackhole").Run()
	for _, a := range addrs {
		if err := run("ip", "-n", n.NS(i), "route", "add", "blackhole", a+"/32"); err != nil {
			return err
		}
	}
	return nil
}
