package testnet

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/p2pimg/p2pimg/license"
	"github.com/p2pimg/p2pimg/node/client"
	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/node/expose"
)

// DefaultDir is where `p2pimg testnet` keeps its nodes unless told otherwise.
func DefaultDir() string { return filepath.Join(os.TempDir(), "p2pimg-testnet") }

// Local is a testnet of daemon processes on this machine: one directory
// holding the cluster file, each node's data and socket, and testnet.json.
// The daemons outlive the command that started them; Down stops them.
type Local struct {
	Dir   string      `json:"-"`
	Bin   string      `json:"bin"`
	Nodes []LocalNode `json:"nodes"`
	// NetNS, when set, runs node k in its own network namespace behind a
	// shaped link instead of on 127.0.0.1.
	NetNS *NetNS `json:"netns,omitempty"`
	// SeatJournal: every daemon records its valid seat intervals in
	// DATA/seats.journal (for the seat fault tests).
	SeatJournal bool `json:"seat_journal,omitempty"`
	// ClockSkew: see UpOptions.ClockSkew.
	ClockSkew time.Duration `json:"clock_skew,omitempty"`
	// Announce and MetricsPort: see UpOptions.
	Announce    time.Duration `json:"announce,omitempty"`
	MetricsPort int           `json:"metrics_port,omitempty"`
	// Registry: see UpOptions.Registry.
	Registry []string `json:"registry,omitempty"`
	// Extra: see UpOptions.Extra.
	Extra map[int][]string `json:"extra,omitempty"`
}

// UpOptions adjust Up.
type UpOptions struct {
	NetNS bool   // each node in its own network namespace (root only)
	Rate  string // with NetNS: each node's link rate, e.g. 400mbit
	// Keepers: nodes 1..Keepers keep the seat table (default 3, or 1 with
	// fewer than 3 nodes).
	Keepers int
	// SeatTTL is the seat lease length (default: the cluster default, 30s).
	SeatTTL string
	// SeatJournal: see Local.SeatJournal.
	SeatJournal bool
	// ClockSkew, for tests: the keepers' clocks are set -skew, 0, +skew,
	// ... apart (see the daemon's hidden --test-clock-offset).
	ClockSkew time.Duration
	// Announce is every daemon's --announce-interval (default 1s).
	Announce time.Duration
	// MetricsPort, when set, gives node i (from 1) Prometheus metrics on
	// 127.0.0.1:MetricsPort+i.
	MetricsPort int
	// Registry: node i serves the registry mirror on Registry[i] (host:port).
	Registry []string
	// Extra are more daemon flags for node k (from 1), e.g. the hidden
	// --test-garbage-serve of a misbehaving peer.
	Extra map[int][]string
}

// LocalNode is one daemon of a Local testnet (numbered from 1).
type LocalNode struct {
	Index  int    `json:"index"`
	Data   string `json:"data"`
	Socket string `json:"socket"`
	PeerID string `json:"peer_id"`
	PID    int    `json:"pid"`
}

func (l *Local) save() error {
	b, _ := json.MarshalIndent(l, "", "  ")
	return os.WriteFile(filepath.Join(l.Dir, "testnet.json"), b, 0o600)
}

// OperatorKey is the testnet's operator key file: it signs activations.
func OperatorKey(dir string) string { return filepath.Join(dir, "operator.key") }

// IssuerKey is the testnet's licence issuer key file; the cluster trusts it.
func IssuerKey(dir string) string { return filepath.Join(dir, "issuer.key") }

// SeatJournal is where node nd records its valid seat intervals.
func SeatJournal(nd LocalNode) string { return filepath.Join(nd.Data, "seats.journal") }

// Root is node k's activation root: `activate --at /opt/app` on node k lands
// in Root/opt/app.
func (nd LocalNode) Root() string { return filepath.Join(nd.Data, "root") }

// OpenLocal reads the testnet in dir.
func OpenLocal(dir string) (*Local, error) {
	b, err := os.ReadFile(filepath.Join(dir, "testnet.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no testnet in %s: start one with `p2pimg testnet up -n 3`", dir)
	}
	if err != nil {
		return nil, err
	}
	l := &Local{Dir: dir}
	if err := json.Unmarshal(b, l); err != nil {
		return nil, fmt.Errorf("testnet state %s: %w", dir, err)
	}
	return l, nil
}

// Up starts n daemons in dir, one cluster with a fresh PSK and a members
// list of exactly these nodes, each connected to every other.
func Up(ctx context.Context, bin, dir string, n int, o UpOptions) (*Local, error) {
	if n < 1 || n > 64 {
		return nil, fmt.Errorf("testnet up: -n %d: want 1 to 64 nodes", n)
	}
	if o.Rate != "" && !o.NetNS {
		return nil, fmt.Errorf("testnet up: --rate shapes the links of --netns hosts; add --netns")
	}
	if o.NetNS && os.Geteuid() != 0 {
		return nil, fmt.Errorf("testnet up: --netns needs root (it makes network namespaces, veth links and tc shaping)")
	}
	if _, err := os.Stat(filepath.Join(dir, "testnet.json")); err == nil {
		return nil, fmt.Errorf("testnet up: %s already holds a testnet; `p2pimg testnet down` first, or use --testnet-dir", dir)
	}
	// down removes the directory, so it must be the testnet's own.
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return nil, fmt.Errorf("testnet up: %s is not empty; give an empty or new directory with --testnet-dir", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	l := &Local{Dir: dir, Bin: bin, SeatJournal: o.SeatJournal, ClockSkew: o.ClockSkew, Announce: o.Announce, MetricsPort: o.MetricsPort, Registry: o.Registry, Extra: o.Extra}
	ok := false
	defer func() {
		if !ok {
			l.Down(ctx, false) // stops what started, removes namespaces and the directory
		}
	}()
	if o.NetNS {
		l.NetNS = &NetNS{Prefix: "p2pimg-t", Subnet: "10.234.78.", Hosts: n, Rate: o.Rate}
		if err := l.NetNS.Up(); err != nil {
			return nil, fmt.Errorf("testnet up: %w", err)
		}
	}
	var ids []string
	for i := 1; i <= n; i++ {
		data := filepath.Join(dir, fmt.Sprintf("node%d", i))
		k, err := cluster.LoadIdentity(data)
		if err != nil {
			return nil, err
		}
		id, _ := cluster.PeerID(k)
		ids = append(ids, id.String())
		l.Nodes = append(l.Nodes, LocalNode{Index: i, Data: data, Socket: filepath.Join(data, "p2pimg.sock"), PeerID: id.String()})
	}
	op, err := cluster.NewKeyFile(OperatorKey(dir))
	if err != nil {
		return nil, err
	}
	c, err := cluster.New("testnet", ids, []string{op.String()})
	if err != nil {
		return nil, err
	}
	if err := seatConfig(c, dir, ids, o); err != nil {
		return nil, err
	}
	if err := c.Write(filepath.Join(dir, "cluster.toml")); err != nil {
		return nil, err
	}
	for i := range l.Nodes {
		if err := l.start(ctx, i); err != nil {
			return nil, err
		}
	}
	if err := l.save(); err != nil {
		return nil, err
	}
	ok = true
	return l, nil
}

// seatConfig makes the testnet's issuer key and names its keepers.
func seatConfig(c *cluster.Config, dir string, ids []string, o UpOptions) error {
	k := o.Keepers
	if k == 0 {
		k = 3
		if len(ids) < 3 {
			k = 1
		}
	}
	if k > len(ids) {
		return fmt.Errorf("testnet up: --keepers %d: only %d nodes", k, len(ids))
	}
	priv, pemBytes, err := license.NewIssuerKey()
	if err != nil {
		return err
	}
	if err := os.WriteFile(IssuerKey(dir), pemBytes, 0o600); err != nil {
		return err
	}
	c.Keepers = ids[:k]
	c.Issuers = []string{license.PublicText(priv.Public().(ed25519.PublicKey))}
	c.SeatTTL = o.SeatTTL
	if err := c.Check(); err != nil {
		return fmt.Errorf("testnet up: %w", err)
	}
	return nil
}

// start runs node i (0-based) with every running node as its peer.
func (l *Local) start(ctx context.Context, i int) error {
	nd := &l.Nodes[i]
	listen := "/ip4/127.0.0.1/tcp/0"
	if l.NetNS != nil {
		listen = "/ip4/" + l.NetNS.Addr(i) + "/tcp/4001"
	}
	args := []string{l.Bin, "daemon", "--data", nd.Data, "--socket", nd.Socket, "--cluster", filepath.Join(l.Dir, "cluster.toml"),
		"--listen", listen, "--no-mdns", "--announce-interval", cmp.Or(l.Announce, time.Second).String(), "--root", nd.Root(),
		"--label", fmt.Sprintf("node=%d", nd.Index), "--name", fmt.Sprintf("node%d", nd.Index), "--http", "127.0.0.1:0"}
	if l.MetricsPort > 0 {
		args = append(args, "--metrics", fmt.Sprintf("127.0.0.1:%d", l.MetricsPort+nd.Index))
	}
	if l.SeatJournal {
		args = append(args, "--test-seat-journal", SeatJournal(*nd))
	}
	if i < len(l.Registry) {
		args = append(args, "--registry", l.Registry[i])
	}
	if l.ClockSkew != 0 {
		args = append(args, "--test-clock-offset", (time.Duration(i%3-1) * l.ClockSkew).String())
	}
	args = append(args, l.Extra[nd.Index]...)
	for j := range l.Nodes {
		if j != i && l.alive(j) {
			if id, err := client.New(l.Nodes[j].Socket).Identity(ctx); err == nil && len(id.Addrs) > 0 {
				args = append(args, "--peer", id.Addrs[0])
			}
		}
	}
	logf, err := os.OpenFile(filepath.Join(nd.Data, "daemon.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	if l.NetNS != nil {
		args = l.NetNS.Exec(i, args...) // ip netns exec replaces itself with the daemon: same pid
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // outlives this command and its terminal
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start node %d: %w", nd.Index, err)
	}
	nd.PID = cmd.Process.Pid
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }() // reaps it if it dies while we wait
	cl := client.New(nd.Socket)
	deadline := time.After(30 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if st, err := cl.Status(ctx); err == nil && st.PID == nd.PID && st.State == "ready" {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("node %d exited while starting; see %s", nd.Index, filepath.Join(nd.Data, "daemon.log"))
		case <-deadline:
			return fmt.Errorf("node %d not ready after 30s; see %s", nd.Index, filepath.Join(nd.Data, "daemon.log"))
		case <-tick.C:
		}
	}
}

// alive reports whether node i's process is running (not gone or a zombie).
func (l *Local) alive(i int) bool { return pidAlive(l.Nodes[i].PID) }

func pidAlive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses.
	s := string(b)
	k := strings.LastIndexByte(s, ')')
	return k < 0 || k+2 >= len(s) || s[k+2] != 'Z'
}

func (l *Local) index(k int) (int, error) {
	if k < 1 || k > len(l.Nodes) {
		return 0, fmt.Errorf("no node %d: this testnet has nodes 1 to %d", k, len(l.Nodes))
	}
	return k - 1, nil
}

// Socket is node k's API socket (k from 1).
func (l *Local) Socket(k int) (string, error) {
	i, err := l.index(k)
	if err != nil {
		return "", err
	}
	return l.Nodes[i].Socket, nil
}

// Kill sends SIGKILL to node k.
func (l *Local) Kill(k int) error {
	i, err := l.index(k)
	if err != nil {
		return err
	}
	if !l.alive(i) {
		return fmt.Errorf("node %d is not running", k)
	}
	syscall.Kill(l.Nodes[i].PID, syscall.SIGKILL)
	return waitGone(l.Nodes[i].PID, 10*time.Second)
}

// Restart starts node k again (stopping it first if it runs).
func (l *Local) Restart(ctx context.Context, k int) error {
	i, err := l.index(k)
	if err != nil {
		return err
	}
	if l.alive(i) {
		syscall.Kill(l.Nodes[i].PID, syscall.SIGTERM)
		if err := waitGone(l.Nodes[i].PID, 15*time.Second); err != nil {
			return err
		}
	}
	if err := l.start(ctx, i); err != nil {
		return err
	}
	return l.save()
}

func waitGone(pid int, d time.Duration) error {
	deadline := time.After(d)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for pidAlive(pid) {
		select {
		case <-deadline:
			return fmt.Errorf("process %d still running after %s", pid, d)
		case <-tick.C:
		}
	}
	return nil
}

// Down stops every node (SIGTERM, then SIGKILL after 15 s) and, unless
// keep, removes the testnet's directory.
func (l *Local) Down(ctx context.Context, keep bool) error {
	var errs []error
	for i := range l.Nodes {
		if l.alive(i) {
			syscall.Kill(l.Nodes[i].PID, syscall.SIGTERM)
		}
	}
	for i := range l.Nodes {
		if err := waitGone(l.Nodes[i].PID, 15*time.Second); err != nil {
			syscall.Kill(l.Nodes[i].PID, syscall.SIGKILL)
			errs = append(errs, waitGone(l.Nodes[i].PID, 5*time.Second))
		}
	}
	unmountUnder(l.Dir) // overlays of activated layers
	if l.NetNS != nil {
		l.NetNS.Down()
	}
	if !keep {
		errs = append(errs, os.RemoveAll(l.Dir))
	}
	return errors.Join(errs...)
}

// NodeStatus is one line of `p2pimg testnet status`.
type NodeStatus struct {
	Index  int    `json:"index"`
	Up     bool   `json:"up"`
	PeerID string `json:"peer_id"`
	PID    int    `json:"pid"`
	Peers  int    `json:"peers"`
	Layers int    `json:"layers"`
	Socket string `json:"socket"`
	Web    string `json:"web,omitempty"` // the node's web view
}

// Status asks every node how it is.
func (l *Local) Status(ctx context.Context) []NodeStatus {
	var out []NodeStatus
	for i, nd := range l.Nodes {
		st := NodeStatus{Index: nd.Index, PeerID: nd.PeerID, PID: nd.PID, Socket: nd.Socket}
		if l.alive(i) {
			cl := client.New(nd.Socket)
			if ps, err := cl.Peers(ctx); err == nil {
				st.Up, st.Peers = true, len(ps)
			}
			if ls, err := cl.Layers(ctx); err == nil {
				st.Layers = len(ls)
			}
			if ds, err := cl.Status(ctx); err == nil {
				st.Web = ds.Web
			}
		}
		out = append(out, st)
	}
	return out
}

// Partition splits the nodes into groups (node numbers from 1) that cannot
// reach each other; nodes in no group keep talking to everyone.
func (l *Local) Partition(ctx context.Context, groups [][]int) error {
	group := map[int]int{}
	for g, ks := range groups {
		for _, k := range ks {
			if _, err := l.index(k); err != nil {
				return err
			}
			if _, dup := group[k]; dup {
				return fmt.Errorf("partition: node %d is in two groups", k)
			}
			group[k] = g
		}
	}
	for i, nd := range l.Nodes {
		var cut []string
		var addrs []string
		g, in := group[nd.Index]
		for j, o := range l.Nodes {
			if og, oin := group[o.Index]; in && oin && og != g {
				cut = append(cut, o.PeerID)
				if l.NetNS != nil {
					addrs = append(addrs, l.NetNS.Addr(j))
				}
			}
		}
		if l.NetNS != nil {
			// In namespaces the network itself is cut: packets to the other
			// groups are dropped by blackhole routes in this host's namespace.
			if err := l.NetNS.Blackhole(i, addrs); err != nil {
				return fmt.Errorf("node %d: %w", nd.Index, err)
			}
		}
		// The gater closes open connections at once (and is the only cut on loopback).
		if err := client.New(nd.Socket).Partition(ctx, cut); err != nil {
			return fmt.Errorf("node %d: %w", nd.Index, err)
		}
	}
	return nil
}

// ParseGroup reads a partition group such as "1,2".
func ParseGroup(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		k, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("partition group %q: want node numbers such as 1,2", s)
		}
		out = append(out, k)
	}
	return out, nil
}

// unmountUnder detaches every mount at or below dir, deepest first.
func unmountUnder(dir string) {
	for _, m := range expose.MountsUnder(dir) {
		syscall.Unmount(m, syscall.MNT_DETACH)
	}
}

// Clients returns an API client for every node, in order.
func (l *Local) Clients() []*client.Client {
	cls := make([]*client.Client, len(l.Nodes))
	for i, nd := range l.Nodes {
		cls[i] = client.New(nd.Socket)
	}
	return cls
}
