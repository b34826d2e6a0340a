package gossip

import (
	"bufio"
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/cluster"
)

func testKey(t testing.TB) (crypto.PrivKey, peer.ID) {
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := peer.IDFromPrivateKey(k)
	return k, id
}

func manifestID(t testing.TB) string {
	m := &chunk.Manifest{Params: chunk.DefaultParams(), Entries: []chunk.Entry{{Path: "d", Type: chunk.Dir}}}
	_, id, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return id.String()
}

func batchBytes(t testing.TB, rs ...Record) []byte {
	b, err := json.Marshal(batch{Records: rs})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func stated(t testing.TB, key crypto.PrivKey, k Kind, rkey string, version int64, data string) Record {
	var d json.RawMessage
	if data != "" {
		d = json.RawMessage(data)
	}
	r, err := signRecord(key, Record{Kind: k, Key: rkey, Version: version, Data: d})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRecordValidation(t *testing.T) {
	t.Parallel()
	pubKey, pub := testKey(t)
	otherKey, other := testKey(t)
	good, err := SignMapping(pubKey, Mapping{Name: "web:1", CID: manifestID(t), Size: 10, Published: time.Now().UnixNano()})
	if err != nil {
		t.Fatal(err)
	}
	onlyPub := &cluster.Config{Name: "t", Publishers: []string{pub.String()}, Members: []string{pub.String(), other.String()}}
	if err := onlyPub.Check(); err != nil {
		t.Fatal(err)
	}
	_, outsider := testKey(t)
	now := time.Now()
	hold := stated(t, pubKey, KindHolding, manifestID(t), now.UnixNano(), `{"complete":true}`)
	for _, tc := range []struct {
		name string
		data func() []byte
		want string
	}{
		{"ok", func() []byte { return batchBytes(t, mappingRecord(good), hold) }, ""},
		{"not json", func() []byte { return []byte("{nope") }, "gossip message"},
		{"unknown field", func() []byte { return []byte(`{"records":[],"evil":true}`) }, "unknown field"},
		{"trailing data", func() []byte { return append(batchBytes(t, hold), []byte(" {}")...) }, "trailing"},
		{"oversized", func() []byte { return bytes.Repeat([]byte(" "), MaxMessageBytes+1) }, "at most"},
		{"empty", func() []byte { return batchBytes(t) }, "no records"},
		{"edited mapping", func() []byte {
			m := good
			m.Size = 11
			return batchBytes(t, mappingRecord(m))
		}, "bad signature"},
		{"envelope does not match", func() []byte {
			r := mappingRecord(good)
			r.Key = "web:2"
			return batchBytes(t, r)
		}, "envelope"},
		{"forged publisher", func() []byte {
			m := good
			m.Publisher = other.String()
			return batchBytes(t, mappingRecord(m))
		}, "may not publish"},
		{"edited holding", func() []byte {
			r := hold
			r.Data = json.RawMessage(`{"complete":false}`)
			return batchBytes(t, r)
		}, "bad signature"},
		{"holding in another's name", func() []byte {
			r := stated(t, otherKey, KindHolding, manifestID(t), now.UnixNano(), `{"complete":true}`)
			r.Origin = pub.String()
			return batchBytes(t, r)
		}, "bad signature"},
		{"outsider", func() []byte {
			r := hold
			r.Origin = outsider.String()
			return batchBytes(t, r)
		}, "not a member"},
		{"chunk id as manifest", func() []byte {
			c, _ := chunk.SumCID([]byte("x"), chunk.SHA256)
			return batchBytes(t, stated(t, pubKey, KindHolding, c.String(), now.UnixNano(), `{"complete":true}`))
		}, "not a manifest id"},
		{"far future", func() []byte {
			return batchBytes(t, stated(t, pubKey, KindHolding, manifestID(t), now.Add(time.Hour).UnixNano(), `{"complete":true}`))
		}, "ahead"},
		{"unknown kind", func() []byte { return batchBytes(t, stated(t, pubKey, 99, "x", now.UnixNano(), `{}`)) }, "unknown record kind"},
		{"oversized record", func() []byte {
			return batchBytes(t, stated(t, pubKey, KindState, "web:1", now.UnixNano(), `{"layer":"web:1","detail":"`+strings.Repeat("x", maxRecordData)+`"}`))
		}, "at most"},
		{"bad labels", func() []byte {
			return batchBytes(t, stated(t, pubKey, KindHost, "", now.UnixNano(), `{"labels":{"a b":"c"}}`))
		}, "label"},
		{"bad name", func() []byte {
			m := good
			m.Name = "../etc"
			return batchBytes(t, mappingRecord(m))
		}, "layer name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeBatch(tc.data(), onlyPub, now)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}

// A replayed or reordered older record changes nothing; a deletion is a
// record like any other and wins over what it deletes.
func TestOlderRecordsIgnored(t *testing.T) {
	t.Parallel()
	k, id := testKey(t)
	c := NewCatalog()
	cl := cluster.Default()
	now := time.Now()
	mid := manifestID(t)
	v1 := stated(t, k, KindHolding, mid, now.UnixNano()-2, `{"complete":false}`)
	v2 := stated(t, k, KindHolding, mid, now.UnixNano()-1, `{"complete":true}`)
	gone := stated(t, k, KindHolding, mid, now.UnixNano(), "")
	rs, err := checkAll([]Record{v2, v1, v2}, cl, now)
	if err != nil {
		t.Fatal(err)
	}
	if n := c.apply(rs); n != 1 {
		t.Fatalf("%d records changed the catalogue, want 1 (the older and the replay change nothing)", n)
	}
	if got := c.Holdings(mid); !got[id] {
		t.Fatalf("holdings %v, want complete at %s", got, id)
	}
	rs, _ = checkAll([]Record{gone, v2}, cl, now)
	c.apply(rs)
	if got := c.Holdings(mid); len(got) != 0 {
		t.Fatalf("holdings %v after the deletion, want none", got)
	}
}

func TestCatalogConflictsResolveDeterministically(t *testing.T) {
	t.Parallel()
	k, _ := testKey(t)
	a, _ := SignMapping(k, Mapping{Name: "web:1", CID: manifestID(t), Published: 100})
	m2 := &chunk.Manifest{Params: chunk.DefaultParams(), Entries: []chunk.Entry{{Path: "e", Type: chunk.Dir}}}
	_, id2, _ := m2.Encode()
	b, _ := SignMapping(k, Mapping{Name: "web:1", CID: id2.String(), Published: 100})
	later, _ := SignMapping(k, Mapping{Name: "web:1", CID: manifestID(t), Published: 200})
	for _, order := range [][]Mapping{{a, b, later}, {later, b, a}, {b, later, a}} {
		c := NewCatalog()
		for _, m := range order {
			c.Merge(m)
		}
		if got, _ := c.Lookup("web:1"); got.Published != 200 {
			t.Fatalf("order %v: kept %+v, want the latest publication", order, got)
		}
	}
	for _, order := range [][]Mapping{{a, b}, {b, a}} {
		c := NewCatalog()
		for _, m := range order {
			c.Merge(m)
		}
		want := max(a.CID, b.CID)
		if got, _ := c.Lookup("web:1"); got.CID != want {
			t.Fatalf("tie: kept %s, want %s", got.CID, want)
		}
	}
}

func FuzzDecodeBatch(f *testing.F) {
	k, _ := testKey(f)
	m, _ := SignMapping(k, Mapping{Name: "web:1", CID: manifestID(f), Size: 1, Published: 1})
	f.Add(batchBytes(f, mappingRecord(m), stated(f, k, KindHolding, m.CID, 5, `{"complete":true}`)))
	f.Add([]byte(`{"records":[{"k":3,"o":"x","key":"y","v":1}]}`))
	f.Add(batchBytes(f, stated(f, k, KindHost, "", 5, `{"name":"a","zone":{"x":[1]},"policy":{"quota":1,"new":2}}`)))
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := decodeBatch(data, cluster.Default(), time.Now())
		if err != nil {
			return
		}
		for _, r := range rs {
			if _, err := CheckRecord(r.Record, cluster.Default(), time.Now()); err != nil {
				t.Fatalf("accepted a record that does not check: %v", err)
			}
		}
	})
}

// FuzzSyncFrame feeds arbitrary bytes to the sync stream's reader: it must
// refuse or decode within its limits, never panic.
func FuzzSyncFrame(f *testing.F) {
	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)
	writeFrame(w, &syncReq{Op: "pull", Want: []want{{Origin: "x", Since: 3}}})
	f.Add(buf.Bytes())
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReader(bytes.NewReader(data))
		var q syncReq
		if _, err := readFrame(r, &q); err == nil && checkReq(&q) == nil && (len(q.Want) > maxWant || len(q.Buckets) > numBuckets) {
			t.Fatal("an oversized request passed")
		}
		var resp syncResp
		readFrame(r, &resp)
	})
}

func TestActivationRecordsChecked(t *testing.T) {
	t.Parallel()
	opKey, op := testKey(t)
	forger, _ := testKey(t)
	c := &cluster.Config{Name: "t", Operators: []string{op.String()}}
	if err := c.Check(); err != nil {
		t.Fatal(err)
	}
	base := Activation{Layer: "app:1", CID: manifestID(t), At: "/opt/app", Hosts: "all", Op: api.OpActivate, Time: 1}
	good, _ := SignActivation(opKey, base)
	forged, _ := SignActivation(forger, base)
	edited := good
	edited.At = "/etc"
	madeLazy := good // a relay may not turn an activation lazy
	madeLazy.Lazy = true
	lazy := base
	lazy.Lazy = true
	lazy, _ = SignActivation(opKey, lazy)
	badPath, _ := SignActivation(opKey, Activation{Layer: "app:1", CID: manifestID(t), At: "relative", Hosts: "all", Op: api.OpActivate, Time: 1})
	for name, tc := range map[string]struct {
		a    Activation
		want string
	}{
		"operator":     {good, ""},
		"non-operator": {forged, "not an operator"},
		"edited":       {edited, "bad signature"},
		"made lazy":    {madeLazy, "bad signature"},
		"lazy":         {lazy, ""},
		"bad path":     {badPath, "absolute"},
	} {
		_, err := decodeBatch(batchBytes(t, activationRecord(tc.a)), c, time.Now())
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: got %v, want %q", name, err, tc.want)
		}
	}
}

// A host that floods the catalogue topic gets its share and no more; the
// others are not affected.
func TestGossipFloodLimited(t *testing.T) {
	c := NewCatalog()
	_, flooder := testKey(t)
	_, quiet := testKey(t)
	now := time.Now()
	accepted := 0
	for range 5000 {
		if c.Admit(flooder, now) == pubsub.ValidationAccept {
			accepted++
		}
	}
	if accepted != int(floodBurst) {
		t.Fatalf("%d of 5000 flooded messages accepted at one instant, want the burst of %d", accepted, int(floodBurst))
	}
	if c.Admit(quiet, now) != pubsub.ValidationAccept {
		t.Fatal("a quiet host was limited by another's flood")
	}
	later := now.Add(time.Second)
	accepted = 0
	for range 1000 {
		if c.Admit(flooder, later) == pubsub.ValidationAccept {
			accepted++
		}
	}
	if accepted != int(floodRate) {
		t.Fatalf("%d accepted a second later, want the rate of %d", accepted, int(floodRate))
	}
}
