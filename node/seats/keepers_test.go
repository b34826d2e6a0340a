package seats

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/chunk/strictcbor"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/cluster"
)

func newKey(t *testing.T) (crypto.PrivKey, string) {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := peer.IDFromPrivateKey(k)
	return k, id.String()
}

// Keeper changes: only an operator's, for this cluster, stating the set
// that follows from its operation, unedited.
func TestKeeperChangeChecks(t *testing.T) {
	op, opID := newKey(t)
	stranger, _ := newKey(t)
	var hosts []string
	for range 4 {
		_, id := newKey(t)
		hosts = append(hosts, id)
	}
	cl, err := cluster.New("fleet", hosts, []string{opID})
	if err != nil {
		t.Fatal(err)
	}
	_, outsider := newKey(t)
	list := api.KeeperList{Index: 7}
	for _, h := range hosts[:3] {
		list.Keepers = append(list.Keepers, api.Keeper{ID: h, Raft: "voter"})
	}
	add, err := NewKeeperChange("fleet", KeeperAdd, hosts[3], list)
	if err != nil {
		t.Fatal(err)
	}
	good, err := SignKeeperChange(op, add)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckKeeperChange(&good, cl); err != nil {
		t.Fatalf("a good change refused: %v", err)
	}
	if !slices.Contains(good.Keepers, hosts[3]) || len(good.Keepers) != 4 || good.Prev != 7 {
		t.Fatalf("change %+v", good)
	}
	resign := func(f func(c *KeeperChange)) KeeperChange {
		c := add
		c.Keepers = slices.Clone(add.Keepers)
		f(&c)
		c, _ = SignKeeperChange(op, c)
		return c
	}
	strangers, _ := SignKeeperChange(stranger, add)
	edited := good
	edited.Keepers = slices.DeleteFunc(slices.Clone(good.Keepers), func(s string) bool { return s == hosts[0] })
	cases := []struct {
		name string
		c    KeeperChange
		want string
	}{
		{"not an operator", strangers, "only an operator of this cluster"},
		{"edited after signing", edited, "bad signature"},
		{"other cluster", resign(func(c *KeeperChange) { c.Cluster = "other" }), "for cluster"},
		{"not a member", resign(func(c *KeeperChange) {
			c.Host = outsider
			c.Keepers = append(c.Keepers[:3], outsider)
			slices.Sort(c.Keepers)
		}), "not a member"},
		{"set lacks the added host", resign(func(c *KeeperChange) {
			c.Keepers = slices.DeleteFunc(c.Keepers, func(s string) bool { return s == hosts[3] })
		}), "lacks it"},
		{"unsorted", resign(func(c *KeeperChange) { c.Keepers[0], c.Keepers[1] = c.Keepers[1], c.Keepers[0] }), "not sorted"},
		{"unknown op", resign(func(c *KeeperChange) { c.Op = "promote" }), "op"},
		{"no configuration", resign(func(c *KeeperChange) { c.Prev = 0 }), "configuration index"},
		{"too many", resign(func(c *KeeperChange) {
			for range 5 {
				_, id := newKey(t)
				c.Keepers = append(c.Keepers, id)
			}
		}), "keepers after it"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckKeeperChange(&tc.c, cl)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
	if err := CheckKeeperChange(&strangers, cl); !errors.Is(err, ErrNotOperator) {
		t.Fatalf("stranger's change: %v, want ErrNotOperator", err)
	}
	// Building a change refuses what makes no sense before anyone signs.
	if _, err := NewKeeperChange("fleet", KeeperAdd, hosts[0], list); err == nil {
		t.Fatal("adding a keeper twice accepted")
	}
	if _, err := NewKeeperChange("fleet", KeeperRemove, hosts[3], list); err == nil {
		t.Fatal("removing a host that is no keeper accepted")
	}
	one := api.KeeperList{Index: 3, Keepers: list.Keepers[:1]}
	if _, err := NewKeeperChange("fleet", KeeperRemove, hosts[0], one); err == nil {
		t.Fatal("removing the last keeper accepted")
	}
	// Ordering: a later configuration wins.
	later := good
	later.Prev, later.Time = 9, time.Now().Add(-time.Hour).UnixNano()
	if !later.Newer(&good) || good.Newer(&later) {
		t.Fatal("a change of a later configuration is not newer")
	}
}

// FuzzSeatNote feeds arbitrary bytes to the decoders of a seat note and of
// the keeper change it carries: refuse or decode, never panic.
func FuzzSeatNote(f *testing.F) {
	var buf bytes.Buffer
	buf.Write(marshalChange(&KeeperChange{Cluster: "c", Op: KeeperAdd, Keepers: []string{"a"}, Prev: 1, Time: 1}))
	f.Add(buf.Bytes())
	f.Add([]byte{0xa2, 0x01, 0x05, 0x02, 0x40})
	f.Fuzz(func(t *testing.T, data []byte) {
		var n seatNote
		if noteDec.Unmarshal(data, &n) == nil {
			unmarshalChange(n.Change)
		}
		unmarshalChange(data)
	})
}

// A seat note from a newer version, with a key this one does not know, is
// read; a malformed one is still refused, and so is a keeper change with
// an unknown key (its signature does not cover it).
func TestSeatNoteFromNewerVersion(t *testing.T) {
	t.Parallel()
	change := marshalChange(&KeeperChange{Cluster: "c", Op: KeeperAdd, Keepers: []string{"a"}, Prev: 1, Time: 1})
	newer := struct {
		Index  uint64 `cbor:"1,keyasint"`
		Change []byte `cbor:"2,keyasint,omitempty"`
		Term   uint64 `cbor:"3,keyasint"`
		Leader string `cbor:"4,keyasint"`
	}{Index: 42, Change: change, Term: 7, Leader: "x"}
	b, err := strictcbor.Encoder().Marshal(newer)
	if err != nil {
		t.Fatal(err)
	}
	var n seatNote
	if err := noteDec.Unmarshal(b, &n); err != nil {
		t.Fatalf("note of a newer version refused: %v", err)
	}
	if n.Index != 42 || !bytes.Equal(n.Change, change) {
		t.Fatalf("known fields of the note not read: %+v", n)
	}
	for name, data := range map[string][]byte{
		"duplicate key":         {0xa2, 0x01, 0x05, 0x01, 0x06},
		"duplicate unknown key": {0xa3, 0x01, 0x05, 0x03, 0x01, 0x03, 0x02},
		"wrong type":            {0xa1, 0x01, 0x61, 'x'},
		"truncated":             {0xa2, 0x01, 0x05, 0x03},
		"trailing data":         {0xa1, 0x01, 0x05, 0x00},
		"tag":                   {0xa1, 0x03, 0xc1, 0x00},
		"indefinite length":     {0xbf, 0x01, 0x05, 0xff},
		"too many keys":         append([]byte{0xb1}, bytes.Repeat([]byte{0x01, 0x00}, 17)...),
	} {
		var n seatNote
		if noteDec.Unmarshal(data, &n) == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	fields := map[int]any{1: "c", 2: KeeperAdd, 4: []string{"a"}, 5: 1, 6: 1}
	known, _ := strictcbor.Encoder().Marshal(fields)
	fields[9] = 1
	extra, _ := strictcbor.Encoder().Marshal(fields)
	if _, err := unmarshalChange(known); err != nil {
		t.Fatalf("keeper change refused: %v", err)
	}
	if _, err := unmarshalChange(extra); err == nil {
		t.Error("keeper change with an unknown key accepted")
	}
}
