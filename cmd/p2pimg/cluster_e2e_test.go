package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// cluster init sets keepers, issuers, publishers and operators; show
// prints the file without its key; validate names what is wrong.
func TestClusterFileCommands(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var ids []string
	for _, n := range []string{"a", "b", "c"} {
		ids = append(ids, strings.TrimSpace(mustCLI(t, nil, "identity", "--data", filepath.Join(dir, n))))
	}
	issuer := filepath.Join(dir, "issuer.key")
	mustCLI(t, nil, "license", "issuer-key", "-o", issuer)
	pub := strings.TrimSpace(mustCLI(t, nil, "license", "issuer-key", "--public", issuer))
	op := strings.TrimSpace(mustCLI(t, nil, "cluster", "operator-key", "-o", filepath.Join(dir, "op.key")))
	file := filepath.Join(dir, "cluster.toml")
	mustCLI(t, nil, "cluster", "init", "--name", "lab", "-o", file, "--members", strings.Join(ids, ","),
		"--keepers", strings.Join(ids, ","), "--publishers", ids[0], "--operators", op, "--issuers", pub, "--seat-ttl", "1m")
	var s clusterSummary
	out := mustCLI(t, nil, "--json", "cluster", "show", file)
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatal(err)
	}
	if s.Name != "lab" || len(s.Members) != 3 || len(s.Keepers) != 3 || len(s.Publishers) != 1 || len(s.Operators) != 1 ||
		len(s.Issuers) != 1 || s.SeatTTL != "1m0s" || s.Open || !strings.HasPrefix(s.PSK, "set (fingerprint ") {
		t.Fatalf("cluster show: %+v", s)
	}
	b, _ := os.ReadFile(file)
	psk := strings.Split(strings.Split(string(b), "psk = \"")[1], "\"")[0]
	if strings.Contains(mustCLI(t, nil, "cluster", "show", file), psk) {
		t.Fatal("cluster show printed the PSK")
	}
	if out := mustCLI(t, nil, "cluster", "validate", file); !strings.Contains(out, "ok: cluster \"lab\", 3 member(s), 3 keeper(s)") {
		t.Fatalf("validate: %s", out)
	}
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte(strings.Replace(string(b), "keepers = [", "keepers = [\"12D3KooWnotapeer\", ", 1)), 0o600)
	if _, errOut, code := cli(t, nil, "cluster", "validate", bad); code != 1 || !strings.Contains(errOut, "keepers") {
		t.Fatalf("validate of a bad file: exit %d %q", code, errOut)
	}
	if _, errOut, code := cli(t, nil, "cluster", "init", "-o", filepath.Join(dir, "two.toml"), "--members", ids[0], "--keepers", ids[0]+","+ids[1]); code != 2 || !strings.Contains(errOut, "keepers") {
		t.Fatalf("init with two keepers: exit %d %q", code, errOut)
	}
}
