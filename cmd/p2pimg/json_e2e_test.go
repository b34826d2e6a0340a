package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/p2pimg/p2pimg/testnet"
)

// timeKey names a JSON field that holds a moment.
var timeKey = regexp.MustCompile(`(^|_)(time|published|added|expires|since|until|seen|started|created|last|end|ends)($|_)`)

// versionTimes are the fields docs/json.md documents as versions, not
// times: integers by design (per command, as JSON paths).
var versionTimes = map[string][]string{
	"activate":   {".time", ".activation.time", ".{host}.time"},
	"deactivate": {".time", ".activation.time", ".{host}.time"},
	"status":     {"[].time"},
}

// Every command's --json output, walked for time fields that are numbers
// or not RFC 3339 in UTC: times are RFC 3339 UTC strings everywhere
// (docs/json.md). A command added
// later must be run here or named in notRun with why.
func TestJSONTimes(t *testing.T) {
	// Not parallel: the daemons run in a zone other than UTC (they inherit
	// TZ), so a time left in local time shows.
	t.Setenv("TZ", "Europe/Paris")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "tn")
	l, err := testnet.Up(ctx, bin, dir, 2, testnet.UpOptions{Keepers: 1, Announce: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Down(context.Background(), false) })
	tmp := t.TempDir()
	src, src2, upper := filepath.Join(tmp, "src"), filepath.Join(tmp, "src2"), filepath.Join(tmp, "upper")
	writeTree(t, src)
	writeTree(t, src2)
	os.WriteFile(filepath.Join(src2, "README"), []byte("other"), 0o644)
	os.MkdirAll(upper, 0o755)
	os.WriteFile(filepath.Join(upper, "new"), []byte("new file"), 0o644)
	lic := filepath.Join(tmp, "lic")
	os.WriteFile(lic, []byte(mustCLI(t, nil, "--testnet-dir", dir, "--node", "1", "license", "issue", "--product", "p", "--seats", "1")), 0o600)
	clusterFile := filepath.Join(tmp, "cluster.toml")
	mustCLI(t, nil, "cluster", "init", "--name", "lab", "-o", clusterFile)

	ran := map[string]bool{}
	run := func(node int, ok func(code int) bool, args ...string) string {
		t.Helper()
		full := append([]string{"--testnet-dir", dir, "--node", fmt.Sprint(node), "--json"}, args...)
		out, errOut, code := cli(t, nil, full...)
		if !ok(code) {
			t.Fatalf("p2pimg %s: exit %d: %s%s", strings.Join(args, " "), code, errOut, out)
		}
		cmd := commandOf(args)
		ran[cmd] = true
		for _, bad := range numericTimes(t, args, out, versionTimes[strings.TrimPrefix(cmd, "p2pimg ")]) {
			t.Errorf("p2pimg %s --json: %s", strings.Join(args, " "), bad)
		}
		return out
	}
	zero := func(code int) bool { return code == 0 }
	zeroOrOne := func(code int) bool { return code <= 1 }
	var claim struct {
		Token uint64 `json:"token"`
	}

	run(1, zero, "version")
	run(1, zero, "id")
	run(1, zero, "identity", "--data", filepath.Join(tmp, "ident"))
	run(1, zero, "peers")
	run(1, zero, "add", "w:1", src)
	run(1, zero, "add", "w:2", src2)
	run(1, zero, "layers")
	run(1, zero, "layers", "--all")
	run(1, zero, "stats")
	run(1, zero, "checkout", "w:1", filepath.Join(tmp, "out"))
	run(1, zero, "common", "w:1", "w:2")
	run(1, zero, "split", "w:1", "w:2", "--common", "base:1")
	base2 := filepath.Join(tmp, "base2")
	mustCLI(t, nil, "--testnet-dir", dir, "--node", "1", "checkout", "base:1", base2)
	os.WriteFile(filepath.Join(base2, "extra"), []byte("in the new base"), 0o644)
	run(1, zero, "add", "base:2", base2)
	run(1, zero, "rebase", "w:2", "--onto", "base:2")
	run(1, zero, "commit", "--base", "w:1", "--upper", upper, "w:3")
	run(1, zero, "import", ociLayoutDir(t, filepath.Join(tmp, "oci")), "--name", "img:1")
	waitCatalogCLI(t, dir, 2, "w:3")
	run(2, zero, "fetch", "w:3")
	run(1, zero, "activate", "w:3", "--at", "/opt/w", "--hosts", "all", "--wait", "--timeout", "1m")
	run(1, zero, "status")
	run(1, zero, "status", "--summary")
	run(1, zeroOrOne, "diff", "w:3")
	run(1, zero, "deactivate", "w:3", "--wait", "--timeout", "1m")
	run(1, zero, "license", "install", lic)
	run(1, zero, "license", "ls")
	json.Unmarshal([]byte(run(2, zero, "license", "claim", "p", "--for", "vm1")), &claim)
	run(2, zero, "license", "check", fmt.Sprint(claim.Token))
	run(2, zero, "license", "release", "p", "--for", "vm1")
	run(1, zero, "license", "keepers", "ls")
	run(1, zero, "policy", "show", "w:1")
	run(1, zero, "policy", "check")
	run(1, zero, "rm", "w:1")
	run(1, zero, "gc")
	run(1, zero, "verify")
	run(1, zeroOrOne, "doctor")
	run(1, zero, "doctor", "--probes")
	run(1, zero, "web")
	run(1, zero, "cluster", "show", clusterFile)
	run(1, zero, "cluster", "validate", clusterFile)
	run(1, zero, "cluster", "reload")
	run(1, zero, "testnet", "status")

	notRun := map[string]string{
		"p2pimg daemon":                 "runs the daemon: no document",
		"p2pimg cluster init":           "writes a file (run above without --json)",
		"p2pimg cluster operator-key":   "writes a key file",
		"p2pimg cluster forget":         "needs a host that is gone; prints {} ",
		"p2pimg license issue":          "prints the licence text (run above)",
		"p2pimg license issuer-key":     "writes a key file",
		"p2pimg license keepers add":    "changes the keepers: KeeperList as in keepers ls",
		"p2pimg license keepers remove": "changes the keepers: KeeperList as in keepers ls",
		"p2pimg policy set-host":        "PolicyResult as in policy show",
		"p2pimg policy set-layer":       "ClusterLayer as in layers --all",
		"p2pimg registry hosts":         "writes containerd's hosts.toml",
		"p2pimg testnet up":             "starts daemons: the testnet status document",
		"p2pimg testnet down":           "stops this test's testnet",
		"p2pimg testnet kill":           "stops a daemon",
		"p2pimg testnet restart":        "restarts a daemon",
		"p2pimg testnet partition":      "cuts links",
		"p2pimg testnet heal":           "heals links",
		"p2pimg testnet env":            "prints shell variables",
		"p2pimg completion bash":        "a shell script",
		"p2pimg completion fish":        "a shell script",
		"p2pimg completion powershell":  "a shell script",
		"p2pimg completion zsh":         "a shell script",
		"p2pimg help":                   "help text",
	}
	var missing []string
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if !c.HasSubCommands() && !ran[c.CommandPath()] && notRun[c.CommandPath()] == "" {
			missing = append(missing, c.CommandPath())
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(newRoot(io.Discard, io.Discard))
	if len(missing) > 0 {
		sort.Strings(missing)
		t.Errorf("commands whose --json output no test walks (run them here, or say why not in notRun): %s", strings.Join(missing, ", "))
	}
}

// commandOf is the command path args name ("p2pimg license claim").
func commandOf(args []string) string {
	root := newRoot(io.Discard, io.Discard)
	c, _, err := root.Find(args)
	if err != nil {
		return "p2pimg " + args[0]
	}
	return c.CommandPath()
}

// numericTimes decodes out (one JSON document, or several in a row) and
// lists the time fields that are numbers, but for the paths allowed.
func numericTimes(t *testing.T, args []string, out string, allowed []string) []string {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(out))
	var bad []string
	n := 0
	for {
		var v any
		if err := dec.Decode(&v); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("p2pimg %s --json: not JSON: %v\n%s", strings.Join(args, " "), err, out)
		}
		n++
		walkJSON(v, "", func(path, key string, x any) {
			if !timeKey.MatchString(key) || contains(allowed, path) {
				return
			}
			switch x := x.(type) {
			case float64:
				bad = append(bad, fmt.Sprintf("%s is the number %v: times are RFC 3339 strings", path, x))
			case string:
				if ts, err := time.Parse(time.RFC3339Nano, x); err != nil || ts.Location() != time.UTC {
					bad = append(bad, fmt.Sprintf("%s is %q: times are RFC 3339 in UTC", path, x))
				}
			}
		})
	}
	if n == 0 {
		t.Errorf("p2pimg %s --json: no output", strings.Join(args, " "))
	}
	return bad
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// walkJSON calls fn on every object field under v, with its path
// (".layer.published", "[].time", ".{host}.time" under a peer id key).
func walkJSON(v any, path string, fn func(path, key string, x any)) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			p := path + "." + k
			if strings.HasPrefix(k, "12D3KooW") { // keyed by host
				p = path + ".{host}"
			}
			fn(p, k, e)
			walkJSON(e, p, fn)
		}
	case []any:
		for _, e := range x {
			walkJSON(e, path+"[]", fn)
		}
	}
}

// ociLayoutDir writes a one-layer OCI image layout (a file etc/hello).
func ociLayoutDir(t *testing.T, dir string) string {
	t.Helper()
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	body := []byte("hello\n")
	tw.WriteHeader(&tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "etc/hello", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))})
	tw.Write(body)
	tw.Close()
	os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755)
	blob := func(b []byte) (string, int) {
		s := sha256.Sum256(b)
		h := hex.EncodeToString(s[:])
		if err := os.WriteFile(filepath.Join(dir, "blobs", "sha256", h), b, 0o644); err != nil {
			t.Fatal(err)
		}
		return "sha256:" + h, len(b)
	}
	ld, lsize := blob(layer.Bytes())
	cfg, _ := json.Marshal(map[string]any{"architecture": "amd64", "os": "linux", "rootfs": map[string]any{"type": "layers", "diff_ids": []string{ld}}})
	cd, csize := blob(cfg)
	man, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": csize},
		"layers": []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": lsize}}})
	md, msize := blob(man)
	idx, _ := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []any{map[string]any{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": msize,
		"annotations": map[string]string{"org.opencontainers.image.ref.name": "img:1"}}}})
	os.WriteFile(filepath.Join(dir, "index.json"), idx, 0o644)
	os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
	return dir
}
