package testnet

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/p2pimg/p2pimg/node"
	"github.com/p2pimg/p2pimg/node/client"
	"github.com/p2pimg/p2pimg/node/cluster"
)

// Net is n real nodes in this process: real libp2p hosts on 127.0.0.1 with
// ephemeral ports, real badger stores in temporary directories, each with
// its local API socket and a client.
type Net struct {
	t     testing.TB
	Nodes []*Node
	opts  options
}

// Node is one node of a Net.
type Node struct {
	Index  int
	Data   string
	Client *client.Client
	cfg    node.DaemonConfig
	d      *node.Daemon
	cancel context.CancelFunc
	done   chan error
}

type options struct {
	cluster  *cluster.Config
	members  int          // WithMembersOnly: how many nodes are members
	isolated map[int]bool // nodes given no peers and not waited for
	announce time.Duration
	stall    time.Duration
	tweak    func(i int, c *node.Config)
	verbose  bool
	keepers  int
	seats    func(c *cluster.Config)
}

// Option adjusts a Net.
type Option func(*options)

// WithCluster puts every node in the cluster c.
func WithCluster(c *cluster.Config) Option { return func(o *options) { o.cluster = c } }

// WithMembersOnly closes the cluster to the first k nodes: their host keys
// are made first and listed as the members. The other nodes are outsiders
// (see Isolated).
func WithMembersOnly(k int) Option { return func(o *options) { o.members = k } }

// Isolated starts node i with no peers and leaves it out of the wait for
// a full mesh: an outsider for tests of who may connect.
func Isolated(i int) Option { return func(o *options) { o.isolated[i] = true } }

// WithConfig lets a test change node i's config (rate caps, a lying peer).
// Several apply in the order given.
func WithConfig(f func(i int, c *node.Config)) Option {
	return func(o *options) {
		prev := o.tweak
		o.tweak = func(i int, c *node.Config) {
			if prev != nil {
				prev(i, c)
			}
			f(i, c)
		}
	}
}

// WithStallTimeout sets how long fetches wait without progress.
func WithStallTimeout(d time.Duration) Option { return func(o *options) { o.stall = d } }

// WithKeepers closes the cluster to the n nodes and makes the first k of
// them keepers of the seat table; edit may set the issuers and lease
// rules.
func WithKeepers(k int, edit func(c *cluster.Config)) Option {
	return func(o *options) { o.keepers, o.seats = k, edit }
}

// Verbose sends the nodes' logs to stderr.
func Verbose() Option { return func(o *options) { o.verbose = true } }

// New starts n nodes, connects each to every other and waits until they
// are all connected. Cleanup stops them and fails the test if goroutines
// leak, so tests that use it must not run in parallel with others.
func New(t testing.TB, n int, opts ...Option) *Net {
	t.Helper()
	leaks := goleak.IgnoreCurrent()
	o := options{announce: 200 * time.Millisecond, stall: 20 * time.Second, isolated: map[int]bool{}}
	for _, f := range opts {
		f(&o)
	}
	net := &Net{t: t, opts: o}
	base := t.TempDir() // before the cleanup below, so it is removed after the nodes stop
	t.Cleanup(func() {
		for _, nd := range net.Nodes {
			nd.stop()
		}
		unmountUnder(base) // overlays of activated layers
		if err := goleak.Find(leaks); err != nil {
			t.Errorf("goroutines leaked by the testnet: %v", err)
		}
	})
	if o.keepers > 0 {
		o.members = n
	}
	if o.members > 0 {
		var ids []string
		for i := range o.members {
			k, err := cluster.LoadIdentity(filepath.Join(base, fmt.Sprintf("n%d", i)))
			if err != nil {
				t.Fatal(err)
			}
			id, _ := cluster.PeerID(k)
			ids = append(ids, id.String())
		}
		c, err := cluster.New("test", ids, nil)
		if err != nil {
			t.Fatal(err)
		}
		if o.keepers > 0 {
			c.Keepers = ids[:o.keepers]
			if o.seats != nil {
				o.seats(c)
			}
			if err := c.Check(); err != nil {
				t.Fatal(err)
			}
		}
		o.cluster = c
	}
	for i := range n {
		nd := &Node{Index: i, Data: filepath.Join(base, fmt.Sprintf("n%d", i))}
		log := slog.New(slog.DiscardHandler)
		if o.verbose {
			log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", i)
		}
		nd.cfg = node.DaemonConfig{
			Config: node.Config{
				DataDir: nd.Data, Log: log, Cluster: o.cluster, Root: filepath.Join(nd.Data, "root"),
				Listen: []string{"/ip4/127.0.0.1/tcp/0"}, AnnounceInterval: o.announce, StallTimeout: o.stall,
			},
			Socket: filepath.Join(nd.Data, "p2pimg.sock"),
		}
		if o.tweak != nil {
			o.tweak(i, &nd.cfg.Config)
		}
		net.Nodes = append(net.Nodes, nd)
		if err := net.start(nd); err != nil {
			t.Fatal(err)
		}
	}
	net.WaitConnected()
	return net
}

// start runs a node's daemon, with every other running node as its peers.
func (net *Net) start(nd *Node) error {
	cfg := nd.cfg
	cfg.Peers = nil
	for _, o := range net.Nodes {
		if net.opts.isolated[nd.Index] || net.opts.isolated[o.Index] {
			continue
		}
		if o != nd && o.d != nil && o.d.Node() != nil {
			cfg.Peers = append(cfg.Peers, o.d.Node().Addrs()...)
		}
	}
	d, err := node.NewDaemon(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	nd.d, nd.cancel, nd.done = d, cancel, make(chan error, 1)
	nd.Client = client.New(d.Socket())
	go func() { nd.done <- d.Run(ctx) }()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if st, err := nd.Client.Status(ctx); err == nil && st.State == "ready" {
			return nil
		}
		select {
		case err := <-nd.done:
			return fmt.Errorf("node %d exited while starting: %v", nd.Index, err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	return fmt.Errorf("node %d not ready after 20s", nd.Index)
}

// stop shuts a node down cleanly (idempotent).
func (nd *Node) stop() error {
	if nd.cancel == nil {
		return nil
	}
	nd.cancel()
	err := <-nd.done
	nd.cancel, nd.d = nil, nil
	return err
}

// Stop shuts node i down.
func (net *Net) Stop(i int) {
	net.t.Helper()
	if err := net.Nodes[i].stop(); err != nil {
		net.t.Fatalf("stop node %d: %v", i, err)
	}
}

// Restart starts node i again on its data directory.
func (net *Net) Restart(i int) {
	net.t.Helper()
	net.Nodes[i].stop()
	if err := net.start(net.Nodes[i]); err != nil {
		net.t.Fatal(err)
	}
}

// Node returns node i's running node (for test hooks), or nil.
func (nd *Node) Node() *node.Node {
	if nd.d == nil {
		return nil
	}
	return nd.d.Node()
}

// WaitConnected waits until every running node is connected to every other.
func (net *Net) WaitConnected() {
	net.t.Helper()
	net.Eventually(20*time.Second, "every node connected to every other", func() bool {
		running := 0
		for _, nd := range net.Nodes {
			if nd.d != nil && !net.opts.isolated[nd.Index] {
				running++
			}
		}
		for _, nd := range net.Nodes {
			if nd.d == nil || net.opts.isolated[nd.Index] {
				continue
			}
			ps, err := nd.Client.Peers(context.Background())
			if err != nil || len(ps) < running-1 {
				return false
			}
		}
		return true
	})
}

// Eventually waits for cond with a deadline, checking every 20 ms.
func (net *Net) Eventually(timeout time.Duration, what string, cond func() bool) {
	net.t.Helper()
	deadline := time.After(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			net.t.Fatalf("timed out after %s waiting for: %s", timeout, what)
		case <-tick.C:
		}
	}
}

// Partition splits the running nodes into groups (node indexes) that cannot
// reach each other; nodes in no group keep talking to everyone.
func (net *Net) Partition(groups ...[]int) {
	net.t.Helper()
	group := map[int]int{}
	for g, is := range groups {
		for _, i := range is {
			group[i] = g
		}
	}
	for _, nd := range net.Nodes {
		if nd.d == nil {
			continue
		}
		var cut []string
		g, in := group[nd.Index]
		for _, o := range net.Nodes {
			if og, oin := group[o.Index]; in && oin && og != g && o.Node() != nil {
				cut = append(cut, o.Node().ID().String())
			}
		}
		if err := nd.Node().Partition(cut); err != nil {
			net.t.Fatalf("partition node %d: %v", nd.Index, err)
		}
	}
}

// Heal undoes Partition and waits until every running node is connected to
// every other again.
func (net *Net) Heal() {
	net.t.Helper()
	for _, nd := range net.Nodes {
		if nd.d != nil {
			nd.Node().Partition(nil)
		}
	}
	net.WaitConnected()
}

// HashFile is the sha256 of a file's contents, for tests that compare files.
func HashFile(t testing.TB, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

// Configure changes node i's config for its next start (see Restart).
func (nd *Node) Configure(f func(c *node.Config)) { f(&nd.cfg.Config) }
