// Command sim runs the real catalogue code (node/gossip: records, gossip
// of changes, anti-entropy) on many nodes in one process over libp2p's
// simulated network (mocknet: in-memory connections, no sockets), and
// prints, as the fleet and the catalogue grow, how long a new mapping
// takes to reach every node and how many control bytes each host sends
// and receives, idle and per publish. `make sim` runs it; a small case
// runs in `make test`.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/node/gossip"
	"github.com/p2pimg/p2pimg/node/notify"
)

// scenario is one row: a fleet of nodes holding a catalogue of records.
type scenario struct {
	Nodes, Records int
}

// result is what a row measured.
type result struct {
	scenario
	P50, P99       time.Duration // a new mapping: publish -> in every node's catalogue
	IdleBytes      float64       // per host per second, sent + received, idle
	PublishBytes   float64       // per host per publish, sent + received
	Converged      bool          // every publish reached every node
	Setup, Elapsed time.Duration
}

// options of a run.
type options struct {
	Interval  time.Duration // anti-entropy interval of every node
	Degree    int           // connections each node opens
	Publishes int
	Idle      time.Duration
	Log       *slog.Logger
}

type node struct {
	h     host.Host
	cat   *gossip.Catalog
	svc   *gossip.Service
	sent  *atomic.Int64 // pubsub RPC bytes sent
	bytes *prometheus.Registry
	ann   *notify.Signal
}

type noLayers struct{}

func (noLayers) Layers(context.Context) ([]chunk.Layer, error) { return nil, nil }
func (noLayers) LayerGen() uint64                              { return 0 }

// tracer counts the bytes of every pubsub RPC a node sends (messages and
// control: IHAVE, IWANT, GRAFT, PRUNE).
type tracer struct{ sent *atomic.Int64 }

func (t tracer) SendRPC(rpc *pubsub.RPC, _ peer.ID)                 { t.sent.Add(int64(proto.Size(&rpc.RPC))) }
func (tracer) OnNewOutboundStream(peer.ID, protocol.ID)             {}
func (tracer) OnClosedOutboundStream(peer.ID)                       {}
func (tracer) Join(string)                                          {}
func (tracer) Leave(string)                                         {}
func (tracer) Graft(peer.ID, string)                                {}
func (tracer) Prune(peer.ID, string)                                {}
func (tracer) ValidateMessage(*pubsub.Message)                      {}
func (tracer) DeliverMessage(*pubsub.Message)                       {}
func (tracer) RejectMessage(*pubsub.Message, string)                {}
func (tracer) DuplicateMessage(*pubsub.Message)                     {}
func (tracer) ThrottlePeer(peer.ID)                                 {}
func (tracer) RecvRPC(*pubsub.RPC)                                  {}
func (tracer) SendRPCCompleted(*pubsub.RPC, peer.ID, time.Duration) {}
func (tracer) DropRPC(*pubsub.RPC, peer.ID)                         {}
func (tracer) UndeliverableMessage(*pubsub.Message)                 {}

// mappings makes n signed mappings of distinct names.
func mappings(key crypto.PrivKey, n int, prefix string) ([]gossip.Record, error) {
	m := &chunk.Manifest{Params: chunk.DefaultParams(), Entries: []chunk.Entry{{Path: "d", Type: chunk.Dir}}}
	_, id, err := m.Encode()
	if err != nil {
		return nil, err
	}
	out := make([]gossip.Record, n)
	now := time.Now().UnixNano()
	for i := range n {
		mp, err := gossip.SignMapping(key, gossip.Mapping{Name: fmt.Sprintf("%s%d:1", prefix, i), CID: id.String(), Size: int64(i), Published: now + int64(i)})
		if err != nil {
			return nil, err
		}
		out[i] = gossip.MappingRecord(mp)
	}
	return out, nil
}

// run builds the fleet, loads the catalogue into every node, lets it
// settle, measures idle traffic, then publishes and times the spread.
func run(ctx context.Context, sc scenario, o options) (result, error) {
	start := time.Now()
	res := result{scenario: sc}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	mn := mocknet.New()
	defer mn.Close()
	cl := cluster.Default()
	nodes, err := fleet(ctx, mn, cl, sc.Nodes, o)
	if err != nil {
		return res, err
	}
	pubKey, _, _ := crypto.GenerateEd25519Key(nil)
	recs, err := mappings(pubKey, sc.Records, "base")
	if err != nil {
		return res, err
	}
	vs, err := gossip.Verify(recs, cl, time.Now())
	if err != nil {
		return res, err
	}
	for _, n := range nodes {
		n.cat.Load(vs)
	}
	// Settle: every node's own records out and the mesh formed.
	settled := func() bool {
		for _, n := range nodes {
			if n.cat.Records()[gossip.KindHost] != len(nodes) {
				return false
			}
		}
		return sameRoot(nodes)
	}
	if !wait(ctx, 60*time.Second+time.Duration(sc.Nodes)*50*time.Millisecond, settled) {
		return res, fmt.Errorf("%d nodes, %d records: the catalogues did not settle", sc.Nodes, sc.Records)
	}
	res.Setup = time.Since(start)
	select { // the mesh's first grafts and the last pulls end
	case <-ctx.Done():
		return res, ctx.Err()
	case <-time.After(2 * o.Interval):
	}
	before := traffic(nodes)
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return res, ctx.Err()
	case <-time.After(o.Idle):
	}
	res.IdleBytes = (traffic(nodes) - before) / float64(sc.Nodes) / time.Since(t0).Seconds()
	var lat []time.Duration
	res.Converged = true
	before = traffic(nodes)
	for i := range o.Publishes {
		from := nodes[rand.IntN(len(nodes))]
		key := from.h.Peerstore().PrivKey(from.h.ID())
		rs, err := mappings(key, 1, fmt.Sprintf("new%d-", i))
		if err != nil {
			return res, err
		}
		var m gossip.Mapping
		json.Unmarshal(rs[0].Data, &m)
		t := time.Now()
		if err := from.cat.Merge(m); err != nil {
			return res, err
		}
		from.ann.Notify()
		got := spread(ctx, nodes, m.Name, t, 60*time.Second)
		if len(got) < len(nodes) {
			res.Converged = false
		}
		lat = append(lat, got...)
	}
	res.PublishBytes = (traffic(nodes) - before) / float64(sc.Nodes) / float64(max(o.Publishes, 1))
	slices.Sort(lat)
	if len(lat) > 0 {
		res.P50, res.P99 = lat[len(lat)/2], lat[min(len(lat)-1, len(lat)*99/100)]
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

// fleet makes n nodes, each linked to its ring neighbour and to degree-1
// random others, and starts their catalogue services.
func fleet(ctx context.Context, mn mocknet.Mocknet, cl *cluster.Config, n int, o options) ([]*node, error) {
	var nodes []*node
	for i := range n {
		// Ed25519 keys, as the daemon's: a record's origin is its key.
		k, _, err := crypto.GenerateEd25519Key(nil)
		if err != nil {
			return nil, err
		}
		h, err := mn.AddPeer(k, ma.StringCast(fmt.Sprintf("/ip4/10.%d.%d.%d/tcp/4001", i>>16&255, i>>8&255, i&255)))
		if err != nil {
			return nil, err
		}
		nd := &node{h: h, cat: gossip.NewCatalog(), sent: &atomic.Int64{}, bytes: prometheus.NewRegistry(), ann: notify.New()}
		nd.svc = gossip.New(gossip.Config{Host: h, Key: h.Peerstore().PrivKey(h.ID()), Cluster: cl, Catalog: nd.cat, Store: noLayers{},
			Log: o.Log, Interval: o.Interval, Announce: nd.ann, Activations: notify.New(),
			HostPolicy: func() json.RawMessage { return nil }, States: func() []gossip.HostState { return nil },
			UnreachableAfter: 12 * o.Interval, GoneAfter: time.Hour, Reg: nd.bytes})
		nodes = append(nodes, nd)
	}
	linked := map[[2]int]bool{}
	link := func(a, b int) error {
		if a == b || linked[[2]int{min(a, b), max(a, b)}] {
			return nil
		}
		linked[[2]int{min(a, b), max(a, b)}] = true
		if _, err := mn.LinkPeers(nodes[a].h.ID(), nodes[b].h.ID()); err != nil {
			return err
		}
		_, err := mn.ConnectPeers(nodes[a].h.ID(), nodes[b].h.ID())
		return err
	}
	for i := range nodes {
		if err := link(i, (i+1)%n); err != nil {
			return nil, err
		}
		for range o.Degree - 1 {
			if err := link(i, rand.IntN(n)); err != nil {
				return nil, err
			}
		}
	}
	for _, nd := range nodes {
		ps, err := gossip.NewPubSub(ctx, nd.h, cl.Name, func(peer.ID) bool { return true }, pubsub.WithRawTracer(tracer{nd.sent}))
		if err != nil {
			return nil, err
		}
		go nd.svc.Run(ctx, ps)
	}
	return nodes, nil
}

// traffic is the bytes every node sent and received so far (pubsub RPCs
// are counted once by their sender, so twice for both ends).
func traffic(nodes []*node) float64 {
	var total float64
	for _, n := range nodes {
		total += 2 * float64(n.sent.Load())
		mfs, _ := n.bytes.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "p2pimg_catalog_bytes_total" {
				for _, m := range mf.GetMetric() {
					for _, l := range m.GetLabel() {
						if l.GetName() == "via" && l.GetValue() == "sync" {
							total += m.GetCounter().GetValue()
						}
					}
				}
			}
		}
	}
	return total
}

// spread polls every node until it has the mapping and returns each
// node's delay after t.
func spread(ctx context.Context, nodes []*node, name string, t time.Time, limit time.Duration) []time.Duration {
	got := make([]time.Duration, len(nodes))
	left := len(nodes)
	for deadline := t.Add(limit); left > 0 && time.Now().Before(deadline) && ctx.Err() == nil; time.Sleep(2 * time.Millisecond) {
		for i, n := range nodes {
			if got[i] == 0 {
				if _, ok := n.cat.Lookup(name); ok {
					got[i] = max(time.Since(t), time.Nanosecond)
					left--
				}
			}
		}
	}
	var out []time.Duration
	for _, d := range got {
		if d > 0 {
			out = append(out, d)
		}
	}
	return out
}

func sameRoot(nodes []*node) bool {
	first := nodes[0].cat.Digest()
	for _, n := range nodes[1:] {
		if n.cat.Digest() != first {
			return false
		}
	}
	return true
}

func wait(ctx context.Context, d time.Duration, ok func() bool) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline) && ctx.Err() == nil; time.Sleep(50 * time.Millisecond) {
		if ok() {
			return true
		}
	}
	return false
}

func main() {
	var small bool
	var interval time.Duration
	var degree int
	flag.BoolVar(&small, "small", false, "the small rows only (seconds)")
	flag.DurationVar(&interval, "interval", 10*time.Second, "anti-entropy interval of every node (the daemon's default --announce)")
	flag.IntVar(&degree, "degree", 8, "connections each node opens")
	only := flag.String("rows", "", "rows to run, NODESxRECORDS comma-separated (default: 10x100,100x100,1000x100,10x10000,100x10000,10x100000)")
	flag.Parse()
	rows := []scenario{{10, 100}, {100, 100}, {1000, 100}, {10, 10000}, {100, 10000}, {10, 100000}}
	if small {
		rows = []scenario{{10, 100}, {50, 1000}}
	}
	if *only != "" {
		rows = nil
		for _, r := range strings.Split(*only, ",") {
			var sc scenario
			if _, err := fmt.Sscanf(r, "%dx%d", &sc.Nodes, &sc.Records); err != nil || sc.Nodes < 2 || sc.Records < 0 {
				fmt.Fprintf(os.Stderr, "sim: -rows %q: want NODESxRECORDS, e.g. 1000x100\n", r)
				os.Exit(2)
			}
			rows = append(rows, sc)
		}
	}
	o := options{Interval: interval, Degree: degree, Publishes: 5, Idle: 3 * interval, Log: slog.New(slog.DiscardHandler)}
	fmt.Printf("catalogue simulation: real node/gossip on mocknet, %d connections a node, anti-entropy every %s, %d publishes a row\n\n", degree, interval, o.Publishes)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODES\tRECORDS\tNEW MAPPING p50\tp99 (target <= 1s at 1,000)\tIDLE B/s PER HOST (target <= 2,000)\tB PER HOST PER PUBLISH\tALL REACHED\tSETUP")
	failed := false
	for _, sc := range rows {
		r, err := run(context.Background(), sc, o)
		if err != nil {
			fmt.Fprintf(tw, "%d\t%d\terror: %v\n", sc.Nodes, sc.Records, err)
			failed = true
			continue
		}
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%.0f\t%.0f\t%v\t%s\n", r.Nodes, r.Records, r.P50.Round(time.Millisecond), r.P99.Round(time.Millisecond),
			r.IdleBytes, r.PublishBytes, r.Converged, r.Setup.Round(time.Second))
		tw.Flush()
		failed = failed || !r.Converged
	}
	tw.Flush()
	if failed {
		os.Exit(1)
	}
}
