package node

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
)

// metricsTimeout bounds what one scrape may wait for (the seat table may
// need a keeper).
const metricsTimeout = 2 * time.Second

// nodeMetrics reads the node's state at each scrape: peers, layers and
// activations by state, seats per product, blocked peers, catalogue
// records by kind.
type nodeMetrics struct {
	n                                           *Node
	peers, blocked, layers, acts, cluster, recs *prometheus.Desc
	seats                                       *prometheus.Desc
}

// registerMetrics adds the node's own metrics and the Go runtime and
// process collectors to its registry.
func (n *Node) registerMetrics() {
	m := &nodeMetrics{n: n,
		peers:   prometheus.NewDesc("p2pimg_peers_connected", "Peers this host has a connection to.", nil, nil),
		blocked: prometheus.NewDesc("p2pimg_peers_blocked", "Peers kept out for sending bad data.", nil, nil),
		layers:  prometheus.NewDesc("p2pimg_layers", "Layer versions in this host's store, by state (complete, incomplete).", []string{"state"}, nil),
		acts:    prometheus.NewDesc("p2pimg_activations", "This host's activations, by state.", []string{"state"}, nil),
		cluster: prometheus.NewDesc("p2pimg_cluster_activations", "Every host's activations as this host knows them, by state and whether the host is heard from.", []string{"state", "reach"}, nil),
		recs:    prometheus.NewDesc("p2pimg_catalog_records_by_kind", "Records in this host's catalogue, by kind.", []string{"kind"}, nil),
		seats:   prometheus.NewDesc("p2pimg_seats", "Seats of each licensed product, held or free, in the seat table as this host knows it.", []string{"product", "state"}, nil),
	}
	n.reg.MustRegister(m, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
}

// Describe implements prometheus.Collector.
func (m *nodeMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.peers, m.blocked, m.layers, m.acts, m.cluster, m.recs, m.seats} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *nodeMetrics) Collect(ch chan<- prometheus.Metric) {
	n := m.n
	ctx, cancel := context.WithTimeout(context.Background(), metricsTimeout)
	defer cancel()
	gauge := func(d *prometheus.Desc, v int, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	gauge(m.peers, len(n.net.Host.Network().Peers()))
	gauge(m.blocked, n.net.Gater.Blocked())
	if ls, err := n.db.Layers(ctx); err == nil {
		by := map[chunk.LayerState]int{chunk.Complete: 0, chunk.Incomplete: 0}
		for _, l := range ls {
			by[l.State]++
		}
		for s, c := range by {
			gauge(m.layers, c, string(s))
		}
	}
	mine := map[api.State]int{}
	for _, st := range n.act.States() {
		mine[st.State]++
	}
	for s, c := range mine {
		gauge(m.acts, c, string(s))
	}
	type key struct {
		state api.State
		reach api.Reach
	}
	all := map[key]int{}
	for _, a := range n.act.Activations() {
		r := a.Reach
		if r == api.ReachSelf {
			r = api.ReachUp
		}
		all[key{a.State, r}]++
	}
	for k, c := range all {
		gauge(m.cluster, c, string(k.state), string(k.reach))
	}
	for k, c := range n.catalog.Records() {
		gauge(m.recs, c, k.String())
	}
	if ls, err := n.seats.Licenses(ctx); err == nil {
		for _, l := range ls.Licenses {
			gauge(m.seats, l.Used, l.Product, "held")
			gauge(m.seats, l.Free, l.Product, "free")
		}
	}
}
