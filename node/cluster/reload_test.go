package cluster

import (
	"errors"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/node/api"
)

func testIDs(t *testing.T, n int) []string {
	t.Helper()
	var ids []string
	for range n {
		_, pub, err := crypto.GenerateEd25519Key(nil)
		if err != nil {
			t.Fatal(err)
		}
		id, _ := peer.IDFromPublicKey(pub)
		ids = append(ids, id.String())
	}
	return ids
}

func TestApply(t *testing.T) {
	t.Parallel()
	ids := testIDs(t, 4)
	base := func() *Config {
		return &Config{Name: "lab", PSK: strings.Repeat("ab", 32), Members: ids[:3], Keepers: ids[:1],
			Grants: map[string][]string{"user:ann": {"gc"}}}
	}
	for _, tc := range []struct {
		name   string
		edit   func(c *Config)
		refuse string // fields named in the error; "" = applied
	}{
		{"members and grants", func(c *Config) {
			c.Members = []string{ids[0], ids[3]}
			c.Grants = map[string][]string{"user:bob": {"gc"}}
		}, ""},
		{"operators and publishers", func(c *Config) { c.Operators, c.Publishers = ids[3:], ids[1:2] }, ""},
		{"name", func(c *Config) { c.Name = "other" }, "changed name"},
		{"psk and keepers", func(c *Config) { c.PSK, c.Keepers = strings.Repeat("cd", 32), ids[1:2] }, "changed psk, keepers"},
		{"seat rules", func(c *Config) { c.SeatTTL = "1m" }, "changed seat_ttl"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			live, next := base(), base()
			if err := live.Check(); err != nil {
				t.Fatal(err)
			}
			tc.edit(next)
			if err := next.Check(); err != nil {
				t.Fatal(err)
			}
			err := live.Apply(next)
			if tc.refuse != "" {
				if !errors.Is(err, ErrNeedsRestart) || !strings.Contains(err.Error(), tc.refuse) {
					t.Fatalf("Apply: %v; want %q and ErrNeedsRestart", err, tc.refuse)
				}
				id2, _ := peer.Decode(ids[2])
				if !live.IsMember(id2) || !live.Granted(api.Right("gc"), "ann", nil) {
					t.Fatal("a refused reload changed the live config")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range ids {
				id, _ := peer.Decode(s)
				if live.IsMember(id) != next.IsMember(id) || live.IsOperator(id) != next.IsOperator(id) || live.MayPublish(id) != next.MayPublish(id) {
					t.Fatalf("after Apply, %s: member %v operator %v publisher %v differ from the new file", s, live.IsMember(id), live.IsOperator(id), live.MayPublish(id))
				}
			}
			if live.Granted(api.Right("gc"), "ann", nil) != next.Granted(api.Right("gc"), "ann", nil) {
				t.Fatal("grants not applied")
			}
		})
	}
}

// Services read the config while a reload swaps it: run with -race.
func TestApplyWhileRead(t *testing.T) {
	t.Parallel()
	ids := testIDs(t, 3)
	live := &Config{Name: "lab", Members: ids[:2]}
	if err := live.Check(); err != nil {
		t.Fatal(err)
	}
	id2, _ := peer.Decode(ids[2])
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 1000 {
			live.IsMember(id2)
			live.MayPublish(id2)
			live.Granted(api.Right("gc"), "ann", nil)
		}
	}()
	for i := range 100 {
		next := &Config{Name: "lab", Members: ids[:2+i%2]}
		if err := next.Check(); err != nil {
			t.Fatal(err)
		}
		if err := live.Apply(next); err != nil {
			t.Fatal(err)
		}
	}
	<-done
	if !live.IsMember(id2) {
		t.Fatal("the last reload (3 members) is not in force")
	}
}
