package cluster

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/p2pimg/p2pimg/node/api"
)

// An operator header proves the key only for the exact request, near now,
// and only for a key the cluster file lists.
func TestVerifyRequest(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	opID, err := NewKeyFile(filepath.Join(dir, "op.key"))
	if err != nil {
		t.Fatal(err)
	}
	op, _ := LoadKeyFile(filepath.Join(dir, "op.key"))
	NewKeyFile(filepath.Join(dir, "other.key"))
	other, _ := LoadKeyFile(filepath.Join(dir, "other.key"))
	c, err := New("t", nil, []string{opID.String()})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	body := []byte(`{"policy":"x"}`)
	good, _ := SignRequest(op, "POST", "/v1/policy/host", body, now)
	stranger, _ := SignRequest(other, "POST", "/v1/policy/host", body, now)
	old, _ := SignRequest(op, "POST", "/v1/policy/host", body, now.Add(-3*time.Minute))
	for _, tc := range []struct {
		name, h, method, uri, body, want string
	}{
		{"good", good, "POST", "/v1/policy/host", string(body), ""},
		{"other body", good, "POST", "/v1/policy/host", `{"policy":"y"}`, "does not match"},
		{"other route", good, "POST", "/v1/gc", string(body), "does not match"},
		{"not an operator", stranger, "POST", "/v1/policy/host", string(body), "not listed under operators"},
		{"stale", old, "POST", "/v1/policy/host", string(body), "away from this host's clock"},
		{"garbage", "x y", "POST", "/v1/gc", "", "want"},
		{"bad signature", strings.Fields(good)[0] + " " + strings.Fields(good)[1] + " AAAA", "POST", "/v1/policy/host", string(body), "does not match"},
	} {
		id, err := c.VerifyRequest(tc.h, tc.method, tc.uri, []byte(tc.body), now)
		switch {
		case tc.want == "" && (err != nil || id != opID):
			t.Errorf("%s: %v %v", tc.name, id, err)
		case tc.want != "" && (!errors.Is(err, ErrBadProof) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestGrants(t *testing.T) {
	t.Parallel()
	c := Default()
	c.Grants = map[string][]string{"group:ops": {"activate", "gc"}, "user:alice": {"map"}}
	if err := c.Check(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		right  api.Right
		user   string
		groups []string
		want   bool
	}{
		{api.RightGC, "bob", []string{"bob", "ops"}, true},
		{api.RightMap, "bob", []string{"ops"}, false},
		{api.RightMap, "alice", nil, true},
		{api.RightPolicy, "alice", []string{"ops"}, false},
	} {
		if got := c.Granted(tc.right, tc.user, tc.groups); got != tc.want {
			t.Errorf("%s for %s %v: %v", tc.right, tc.user, tc.groups, got)
		}
	}
	for _, bad := range []map[string][]string{{"alice": {"gc"}}, {"user:alice": {"root"}}, {"group:": {"gc"}}} {
		c.Grants = bad
		if err := c.Check(); err == nil || !strings.Contains(err.Error(), "grants") {
			t.Errorf("grants %v: %v", bad, err)
		}
	}
}
