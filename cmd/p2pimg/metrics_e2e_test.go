package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The metrics beside the web view: the node's own gauges (peers, layers
// and activations by state, catalogue records by kind, blocked peers), the
// Go runtime and process collectors, and no pprof unless asked for.
func TestMetrics(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, t.TempDir(), "--http", "127.0.0.1:0")
	src := t.TempDir()
	writeTree(t, src)
	mustCLI(t, d, "add", "web:1", src)
	// One time format: published is RFC 3339 in layers and layers --all.
	for _, args := range [][]string{{"layers", "--json"}, {"layers", "--all", "--json"}} {
		var ls []struct {
			Published time.Time `json:"published"`
		}
		if err := json.Unmarshal([]byte(mustCLI(t, d, args...)), &ls); err != nil || len(ls) != 1 || ls[0].Published.IsZero() {
			t.Errorf("%v: %+v %v; want published as an RFC 3339 time", args, ls, err)
		}
	}
	st, err := d.Client.Status(context.Background())
	if err != nil || st.Web == "" {
		t.Fatalf("status: %+v %v", st, err)
	}
	get := func(path string) (int, string) {
		resp, err := http.Get(st.Web + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get("metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		`p2pimg_layers{state="complete"} 1`,
		"p2pimg_peers_connected 0",
		"p2pimg_peers_blocked 0",
		`p2pimg_catalog_records_by_kind{kind="mapping"} 1`,
		"go_goroutines ",
		"process_resident_memory_bytes ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if code, _ := get("debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("pprof without --pprof: %d", code)
	}
}
