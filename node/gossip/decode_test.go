package gossip

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/p2pimg/p2pimg/node/cluster"
)

// A newer version may add fields to what a host says of itself: this
// version reads the fields it knows and skips the others, so the host
// stays in its view during a rolling upgrade. Malformed data is still
// refused, and so is an unknown field under a signature that does not
// cover it (a mapping's, an activation's).
func TestRecordsFromNewerVersion(t *testing.T) {
	t.Parallel()
	key, id := testKey(t)
	c := &cluster.Config{Name: "t", Members: []string{id.String()}}
	if err := c.Check(); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	v := now.UnixNano()
	mid := manifestID(t)
	check := func(r Record) (*checked, error) { return CheckRecord(r, c, now) }

	host, err := check(stated(t, key, KindHost, "", v, `{"name":"gpu-1","labels":{"gpu":"true"},"zone":"eu-1",`+
		`"policy":{"quota":100,"cpu_quota":{"max":4}},"store":{"at":1,"layers":2,"disk_free":1,"disk_total":5,"iops":9},"new":[1,{"a":null}]}`))
	if err != nil {
		t.Fatalf("host record with fields of a newer version refused: %v", err)
	}
	if host.host.Name != "gpu-1" || host.host.Labels["gpu"] != "true" || host.policy.Quota != 100 ||
		host.host.Store == nil || host.host.Store.Layers != 2 || host.host.Store.DiskTotal != 5 {
		t.Fatalf("known fields of a host record not read: %+v, policy %+v", host.host, host.policy)
	}
	hold, err := check(stated(t, key, KindHolding, mid, v, `{"complete":true,"verified_at":5}`))
	if err != nil || !hold.holding.Complete {
		t.Fatalf("holding with a newer field: %v", err)
	}
	st, err := check(stated(t, key, KindState, "web:1", v, `{"layer":"web:1","cid":"`+mid+`","state":"active","time":3,"shards":[1,2]}`))
	if err != nil || st.state.State != "active" || st.state.Time != 3 {
		t.Fatalf("state with a newer field: %v", err)
	}
	// Relayed as it came: the envelope's signature and digest cover the
	// data whole, unknown fields included.
	if !strings.Contains(string(host.Data), `"zone":"eu-1"`) {
		t.Fatal("the data a host record travels with lost its unknown field")
	}

	m, _ := SignMapping(key, Mapping{Name: "web:1", CID: mid, Size: 1, Published: v})
	withExtra := func(b []byte, field string) json.RawMessage {
		return json.RawMessage(strings.TrimSuffix(string(b), "}") + "," + field + "}")
	}
	mr := mappingRecord(m)
	mr.Data = withExtra(mr.Data, `"mirror":"evil"`)
	open := &cluster.Config{Name: "t"} // anyone publishes
	if err := open.Check(); err != nil {
		t.Fatal(err)
	}
	if _, err := CheckRecord(mr, open, now); err == nil || !strings.Contains(err.Error(), "unknown field") {
		t.Fatalf("mapping with a field its signature does not cover: got %v, want unknown field", err)
	}

	for _, tc := range []struct {
		name, data, want string
	}{
		{"duplicate key", `{"name":"a","name":"b"}`, "twice"},
		{"duplicate nested key", `{"store":{"at":1,"at":2,"disk_total":1}}`, "twice"},
		{"duplicate unknown key", `{"zone":1,"zone":2}`, "twice"},
		{"duplicate label", `{"labels":{"a":"1","a":"2"}}`, "twice"},
		{"wrong type", `{"name":5}`, "cannot unmarshal"},
		{"wrong nested type", `{"store":{"at":"now"}}`, "cannot unmarshal"},
		{"wrong policy type", `{"policy":{"quota":"big"}}`, "cannot unmarshal"},
		{"not json", `{"name":`, "unexpected EOF"},
		{"bad syntax", `{"name" "a"}`, "invalid character"},
		{"trailing data", `{"name":"a"} {}`, "trailing"},
		{"not an object", `["a"]`, "cannot unmarshal"},
		{"oversized", `{"zone":"` + strings.Repeat("x", maxRecordData) + `"}`, "at most"},
		{"bad policy", `{"policy":{"quota":-1}}`, "must not be negative"},
	} {
		if _, err := check(stated(t, key, KindHost, "", v, tc.data)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
	}
	if _, err := check(stated(t, key, KindHolding, mid, v, `{"complete":"yes","x":1}`)); err == nil {
		t.Error("holding of the wrong type accepted")
	}
}

// FuzzUniqueKeys: what uniqueKeys accepts is one valid JSON value.
func FuzzUniqueKeys(f *testing.F) {
	f.Add([]byte(`{"a":[1,{"b":2,"c":{}}],"d":"x"}`))
	f.Add([]byte(`{"a":1,"a":2}`))
	f.Add([]byte(`[{"a":1},{"a":1}] `))
	f.Add([]byte(`1 2`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if uniqueKeys(data) == nil && !json.Valid(data) {
			t.Fatalf("accepted %q, which is not one JSON value", data)
		}
	})
}
