package api

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/p2pimg/p2pimg/chunk"
)

// The results that carry layer records show published in RFC 3339 and
// read back to the same records.
func TestLayerResultsJSON(t *testing.T) {
	t.Parallel()
	pub := time.Date(2026, 12, 4, 15, 12, 27, 440477042, time.UTC)
	l := chunk.Layer{Name: "web:1", CID: "bafy", State: chunk.Complete, Size: 3, Added: pub, Publisher: "12D3", Published: pub.UnixNano(), Signature: []byte{1, 2}}
	for _, c := range []struct {
		name string
		v    any
		back any
		n    int // RFC 3339 published times in the JSON
	}{
		{"add", AddResult{Layer: l, NewChunks: 2, Skipped: []SkippedPath{{Path: "x", Reason: "socket"}}}, &AddResult{}, 1},
		{"fetch", FetchResult{Layer: l, FetchedBytes: 9, Peers: map[string]int64{"p": 9}}, &FetchResult{}, 1},
		{"checkout", CheckoutResult{Layer: l, Dir: "/d"}, &CheckoutResult{}, 1},
		{"split", SplitResult{Common: l, Layers: []chunk.Layer{l, l}}, &SplitResult{}, 3},
		{"import", ImportResult{Layers: []chunk.Layer{l}}, &ImportResult{}, 1},
		{"unpublished", AddResult{Layer: chunk.Layer{Name: "x:1"}}, &AddResult{}, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			b, err := json.Marshal(c.v)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Count(string(b), `"published":"2026-12-04T15:12:27.440477042Z"`); got != c.n || strings.Contains(string(b), `"published":1`) {
				t.Fatalf("%s: %d RFC 3339 published times, want %d", b, got, c.n)
			}
			if err := json.Unmarshal(b, c.back); err != nil {
				t.Fatal(err)
			}
			if got := reflect.ValueOf(c.back).Elem().Interface(); !reflect.DeepEqual(got, c.v) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, c.v)
			}
		})
	}
}
