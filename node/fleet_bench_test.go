package node

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/policy"
)

// fleetInput is a fleet of h hosts and l layers as the web view's model
// builder gets it: every host holds every layer and reports a state for
// it (1 in 50 fetching), 1 in 100 hosts unreachable, and one policy
// conflict per layer.
func fleetInput(h, l int) ([]api.ClusterLayer, []api.HostActivation, []api.PolicyResult, map[string]api.FleetHost) {
	now := time.Now().UTC()
	hosts := map[string]api.FleetHost{}
	ids := make([]string, h)
	for i := range ids {
		ids[i] = fmt.Sprintf("12D3KooW%044d", i)
		reach := api.ReachUp
		if i%100 == 99 {
			reach = api.ReachUnreachable
		}
		hosts[ids[i]] = api.FleetHost{ID: ids[i], Name: fmt.Sprintf("hv-%04d", i), Labels: map[string]string{"rack": fmt.Sprint(i % 40)}, Reach: reach, LastSeen: now}
	}
	var cat []api.ClusterLayer
	var acts []api.HostActivation
	var conflicts []api.PolicyResult
	for j := range l {
		name := fmt.Sprintf("image-%03d:1", j)
		cid := fmt.Sprintf("bafybeig%051d", j)
		cl := api.ClusterLayer{Name: name, CID: cid, Size: 1 << 30, Published: now, Holders: map[string]string{}}
		for i, id := range ids {
			cl.Holders[id] = "complete"
			st := api.HostActivation{Host: id, Layer: name, CID: cid, At: "/var/lib/images/" + name, State: api.StateActive, Mode: api.Mode("fuse"), Time: now.UnixNano()}
			if (i+j)%50 == 0 {
				st.State, st.Done, st.Total, st.Peers = api.StateFetching, 1<<29, 1<<30, 7
			}
			acts = append(acts, st)
		}
		cat = append(cat, cl)
		conflicts = append(conflicts, api.PolicyResult{Layer: name, Host: ids[j%h], Conflict: &policy.Conflict{LayerRule: "hold = all", HostRule: `deny = ["image-*"]`}})
	}
	return cat, acts, conflicts, hosts
}

// BenchmarkFleetMatrix is one rebuild of the web view's model (the
// layers x hosts matrix and the transfers) and of its JSON, as every
// update of every open page does; B/update is the JSON sent. Compare
// hosts=1000 with hosts=2000 for how it grows.
func BenchmarkFleetMatrix(b *testing.B) {
	for _, c := range []struct{ hosts, layers int }{{500, 20}, {1000, 20}, {2000, 20}, {1000, 100}} {
		cat, acts, conflicts, hosts := fleetInput(c.hosts, c.layers)
		rate := func(string, int64) int64 { return 1 << 20 }
		b.Run(fmt.Sprintf("hosts=%d/layers=%d/build", c.hosts, c.layers), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				fleetMatrix(cat, acts, conflicts, hosts, rate)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(c.hosts*c.layers), "ns/cell")
		})
		b.Run(fmt.Sprintf("hosts=%d/layers=%d/build+json", c.hosts, c.layers), func(b *testing.B) {
			var size, zipped int
			for b.Loop() {
				layers, transfers := fleetMatrix(cat, acts, conflicts, hosts, rate)
				doc, err := json.Marshal(api.Fleet{Layers: layers, Transfers: transfers})
				if err != nil {
					b.Fatal(err)
				}
				size = len(doc)
			}
			b.StopTimer()
			var zb bytes.Buffer
			zw, _ := gzip.NewWriterLevel(&zb, gzip.BestSpeed) // as the event stream sends it to a browser
			layers, transfers := fleetMatrix(cat, acts, conflicts, hosts, rate)
			json.NewEncoder(zw).Encode(api.Fleet{Layers: layers, Transfers: transfers})
			zw.Flush()
			zipped = zb.Len()
			b.ReportMetric(float64(size), "B/update")
			b.ReportMetric(float64(zipped), "gzipB/update")
		})
	}
}

// The matrix of a small fleet: rows by name, cells by host (sorted), the
// summary leaving out hosts that only hold a layer, stale cells of
// unreachable hosts, conflicts, and fetches as transfers with their rate.
func TestFleetMatrix(t *testing.T) {
	t.Parallel()
	cat, acts, conflicts, hosts := fleetInput(100, 3) // host 99 unreachable
	acts = acts[1:]                                   // host 0 only holds image-000:1
	rates := map[string]bool{}
	layers, transfers := fleetMatrix(cat, acts, conflicts, hosts, func(key string, _ int64) int64 { rates[key] = true; return 7 })
	if len(layers) != 3 || layers[0].Name != "image-000:1" || layers[2].Name != "image-002:1" {
		t.Fatalf("rows: %+v", layers)
	}
	l := layers[0]
	if len(l.Cells) != 100 || l.Hosts != 99 || l.Unreachable != 1 || l.Summary[api.StateActive] != 98 || l.Summary[api.StateFetching] != 1 {
		t.Fatalf("image-000:1: %d cells, %d hosts with a state, %d unreachable, summary %v", len(l.Cells), l.Hosts, l.Unreachable, l.Summary)
	}
	for i, c := range l.Cells {
		if i > 0 && l.Cells[i-1].Host >= c.Host {
			t.Fatalf("cells not sorted by host at %d", i)
		}
	}
	if c := l.Cells[0]; c.State != "" || c.Holds != "complete" || c.Conflict == "" {
		t.Fatalf("host 0's cell of image-000:1 (holds, no state, a conflict): %+v", c)
	}
	if c := l.Cells[99]; !c.Stale || c.State != api.StateActive {
		t.Fatalf("host 99's cell (unreachable): %+v", c)
	}
	// Fetching where (host+layer)%50 == 0, but host 0's state of layer 0 was dropped.
	if len(transfers) != 5 || len(rates) != 5 || transfers[0].Layer != "image-000:1" || transfers[0].Rate != 7 {
		t.Fatalf("transfers: %+v (rates asked for %v)", transfers, rates)
	}
}
