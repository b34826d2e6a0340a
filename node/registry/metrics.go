package registry

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	requests  *prometheus.CounterVec
	bytes     *prometheus.CounterVec
	stored    prometheus.Counter
	resolve   prometheus.Histogram
	firstByte *prometheus.HistogramVec
	coord     *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "p2pimg_registry_requests_total", Help: "Registry API requests, by upstream registry (cluster when no ns), kind, source and result.",
		}, []string{"registry", "kind", "source", "result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "p2pimg_registry_bytes_served_total", Help: "Blob and manifest bytes served, by where they came from (local, peer, upstream).",
		}, []string{"source"}),
		stored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "p2pimg_registry_bytes_ingested_total", Help: "Blob and manifest bytes checked and stored by this registry (upstream pulls and imports).",
		}),
		resolve: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "p2pimg_registry_manifest_seconds", Help: "Time to resolve and answer a manifest request.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		firstByte: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "p2pimg_registry_blob_first_byte_seconds", Help: "Time from a blob request to its first byte, by source.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}, []string{"source"}),
	}
	m.coord = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "p2pimg_registry_cluster_fetches_total",
		Help: "Blobs this host fetched while the cluster had none: chosen_here (from upstream, for the cluster), from_peer (streamed from the host chosen for it or the chain behind it), fallback_REASON (from upstream here: unreachable, refused, stalled, cut, digest).",
	}, []string{"outcome"})
	for _, o := range []string{coordChosenHere, coordFromPeer, coordFallback + reasonUnreach, coordFallback + reasonRefused,
		coordFallback + reasonStalled, coordFallback + reasonCut, coordFallback + reasonDigest} {
		m.coord.WithLabelValues(o)
	}
	reg.MustRegister(m.requests, m.bytes, m.stored, m.resolve, m.firstByte, m.coord)
	return m
}
