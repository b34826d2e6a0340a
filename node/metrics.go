package node

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the daemon's Prometheus series, on its own registry (no
// global state: tests run many nodes in one process).
type metrics struct {
	reg           *prometheus.Registry
	bytesIn       *prometheus.CounterVec
	bytesOut      *prometheus.CounterVec
	chunksServed  prometheus.Counter
	chunksFetched prometheus.Counter
	verifyFails   *prometheus.CounterVec
	corruptOnDisk prometheus.Counter
	fetchSeconds  prometheus.Histogram
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		bytesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "p2pimg_chunk_bytes_in_total", Help: "Chunk bytes received, by peer.",
		}, []string{"peer"}),
		bytesOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "p2pimg_chunk_bytes_out_total", Help: "Chunk bytes served, by peer.",
		}, []string{"peer"}),
		chunksServed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "p2pimg_chunks_served_total", Help: "Chunks served to peers.",
		}),
		chunksFetched: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "p2pimg_chunks_fetched_total", Help: "Chunks fetched from peers and stored.",
		}),
		verifyFails: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "p2pimg_chunk_verify_failures_total", Help: "Chunks from peers that did not match their CID, by peer.",
		}, []string{"peer"}),
		corruptOnDisk: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "p2pimg_chunks_corrupt_on_disk_total", Help: "Stored chunks found damaged when read.",
		}),
		fetchSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "p2pimg_fetch_duration_seconds", Help: "Time to fetch a layer.",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 14),
		}),
	}
	m.reg.MustRegister(m.bytesIn, m.bytesOut, m.chunksServed, m.chunksFetched, m.verifyFails, m.corruptOnDisk, m.fetchSeconds)
	return m
}
