package gossip

import (
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

func snapshotBytes(t testing.TB, s Snapshot) []byte {
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSnapshotValidation(t *testing.T) {
	t.Parallel()
	pubKey, pub := testKey(t)
	_, other := testKey(t)
	good, err := SignMapping(pubKey, Mapping{Name: "web:1", CID: manifestID(t), Size: 10, Published: time.Now().UnixNano()})
	if err != nil {
		t.Fatal(err)
	}
	onlyPub := &cluster.Config{Name: "t", Publishers: []string{pub.String()}}
	if err := onlyPub.Check(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		data func() []byte
		want string
	}{
		{"ok", func() []byte { return snapshotBytes(t, Snapshot{Seq: 1, Mappings: []Mapping{good}}) }, ""},
		{"not json", func() []byte { return []byte("{nope") }, "snapshot"},
		{"unknown field", func() []byte { return []byte(`{"seq":1,"evil":true}`) }, "unknown field"},
		{"trailing data", func() []byte { return append(snapshotBytes(t, Snapshot{Seq: 1}), []byte(" {}")...) }, "trailing"},
		{"oversized", func() []byte { return bytes.Repeat([]byte(" "), MaxSnapshotBytes+1) }, "at most"},
		{"zero seq", func() []byte { return snapshotBytes(t, Snapshot{}) }, "seq 0"},
		{"edited name", func() []byte {
			m := good
			m.Name = "web:2"
			return snapshotBytes(t, Snapshot{Seq: 1, Mappings: []Mapping{m}})
		}, "bad signature"},
		{"edited cid", func() []byte {
			m := good
			m.Size = 11
			return snapshotBytes(t, Snapshot{Seq: 1, Mappings: []Mapping{m}})
		}, "bad signature"},
		{"forged publisher", func() []byte {
			m := good
			m.Publisher = other.String()
			return snapshotBytes(t, Snapshot{Seq: 1, Mappings: []Mapping{m}})
		}, "may not publish"},
		{"chunk id as manifest", func() []byte {
			c, _ := chunk.SumCID([]byte("x"), chunk.SHA256)
			return snapshotBytes(t, Snapshot{Seq: 1, Holdings: []Holding{{CID: c.String()}}})
		}, "not a manifest id"},
		{"bad name", func() []byte {
			m := good
			m.Name = "../etc"
			return snapshotBytes(t, Snapshot{Seq: 1, Mappings: []Mapping{m}})
		}, "layer name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeSnapshot(tc.data(), onlyPub)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
	// The same mapping signed by a host that is not a publisher is refused.
	otherPub := &cluster.Config{Name: "t", Publishers: []string{other.String()}}
	otherPub.Check()
	_, err = DecodeSnapshot(snapshotBytes(t, Snapshot{Seq: 1, Mappings: []Mapping{good}}), otherPub)
	if err == nil {
		t.Fatal("a mapping from a non-publisher was accepted")
	}
}

func TestReplayIgnoredAndFutureRejected(t *testing.T) {
	t.Parallel()
	c := NewCatalog()
	_, p := testKey(t)
	now := time.Now()
	if r := c.Admit(p, now.UnixNano(), now); r != pubsub.ValidationAccept {
		t.Fatalf("first: %v", r)
	}
	if r := c.Admit(p, now.UnixNano(), now); r != pubsub.ValidationIgnore {
		t.Fatalf("replay: %v", r)
	}
	if r := c.Admit(p, now.Add(-time.Second).UnixNano(), now); r != pubsub.ValidationIgnore {
		t.Fatalf("older: %v", r)
	}
	if r := c.Admit(p, now.Add(time.Hour).UnixNano(), now); r != pubsub.ValidationReject {
		t.Fatalf("far future: %v", r)
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

func FuzzDecodeSnapshot(f *testing.F) {
	k, _ := testKey(f)
	m, _ := SignMapping(k, Mapping{Name: "web:1", CID: manifestID(f), Size: 1, Published: 1})
	f.Add(snapshotBytes(f, Snapshot{Seq: 1, Mappings: []Mapping{m}, Holdings: []Holding{{CID: m.CID, Complete: true}}}))
	f.Add([]byte(`{"seq":5,"mappings":[],"holdings":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := DecodeSnapshot(data, cluster.Default())
		if err != nil {
			return
		}
		for _, m := range s.Mappings {
			if CheckMapping(&m, func(peer.ID) bool { return true }) != nil {
				t.Fatal("accepted a snapshot with a mapping that does not check")
			}
		}
	})
}

func TestSnapshotActivationsChecked(t *testing.T) {
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
	badPath, _ := SignActivation(opKey, Activation{Layer: "app:1", CID: manifestID(t), At: "relative", Hosts: "all", Op: api.OpActivate, Time: 1})
	for name, tc := range map[string]struct {
		a    Activation
		want string
	}{
		"operator":     {good, ""},
		"non-operator": {forged, "not an operator"},
		"edited":       {edited, "bad signature"},
		"bad path":     {badPath, "absolute"},
	} {
		_, err := DecodeSnapshot(snapshotBytes(t, Snapshot{Seq: 1, Activations: []Activation{tc.a}}), c)
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
	for i := range 5000 {
		if c.Admit(flooder, now.UnixNano()+int64(i)+1, now) == pubsub.ValidationAccept {
			accepted++
		}
	}
	if accepted != int(floodBurst) {
		t.Fatalf("%d of 5000 flooded snapshots accepted at one instant, want the burst of %d", accepted, int(floodBurst))
	}
	if c.Admit(quiet, now.UnixNano(), now) != pubsub.ValidationAccept {
		t.Fatal("a quiet host was limited by another's flood")
	}
	later := now.Add(time.Second)
	accepted = 0
	for i := range 1000 {
		if c.Admit(flooder, later.UnixNano()+int64(i)+1, later) == pubsub.ValidationAccept {
			accepted++
		}
	}
	if accepted != int(floodRate) {
		t.Fatalf("%d accepted a second later, want the rate of %d", accepted, int(floodRate))
	}
}
