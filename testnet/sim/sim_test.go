package main

import (
	"context"
	"log/slog"
	"testing"
	"time"
)

// The small case of `make sim`: 20 nodes with 200 records settle on one
// catalogue, and every new mapping reaches every node. The figures are
// logged, not asserted: timings belong to `make sim`.
func TestSimSmall(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	o := options{Interval: time.Second, Degree: 6, Publishes: 3, Idle: 3 * time.Second, Log: slog.New(slog.DiscardHandler)}
	r, err := run(context.Background(), scenario{Nodes: 20, Records: 200}, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("20 nodes, 200 records: new mapping p50 %s p99 %s; idle %.0f B/s per host at a 1 s interval; %.0f B per host per publish",
		r.P50, r.P99, r.IdleBytes, r.PublishBytes)
	if !r.Converged {
		t.Fatal("a new mapping did not reach every node")
	}
}
