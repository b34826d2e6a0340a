package node

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/caller"
)

// The local API refuses bad JSON, unknown fields, huge bodies and names
// with path tricks, each with a bad_request naming the problem.
func TestAPIRefusesBadRequests(t *testing.T) {
	h := apiHandler(t)
	huge := `{"name":"a:1","path":"/` + strings.Repeat("x", 2<<20) + `"}`
	cases := []struct {
		method, path, body, want string
	}{
		{"POST", "/v1/layers", `{"name": "a:1", "path": `, "request body"},
		{"POST", "/v1/layers", `{"name": "a:1", "path": "/tmp", "extra": 1}`, "unknown field"},
		{"POST", "/v1/layers", huge, "request body"},
		{"POST", "/v1/checkout", `{"name": "../../etc:1", "dir": "/tmp/x"}`, "layer name"},
		{"POST", "/v1/checkout", `{"name": "a:1", "dir": "relative/dir"}`, "must be absolute"},
		{"GET", "/v1/diff/..%2F..%2Fetc", "", "layer name"},
		{"POST", "/v1/license/claim", `{"product": "p", "consumer": "bad id"}`, "consumer"},
		{"POST", "/v1/policy/host", `{"policy": "quota = -5"}`, "quota"},
		{"GET", "/v1/license/check?token=abc", "", "not a grant token"},
	}
	for _, c := range cases {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(c.method, c.path, strings.NewReader(c.body))
		h.ServeHTTP(rec, req.WithContext(caller.With(req.Context(), caller.Caller{UID: 0}))) // as root, over the socket
		body := rec.Body.String()
		if strings.HasPrefix(rec.Header().Get("Content-Type"), "application/x-ndjson") { // streamed: the error is the last event
			lines := strings.Split(strings.TrimSpace(body), "\n")
			body = lines[len(lines)-1]
		} else if rec.Code != http.StatusBadRequest {
			t.Errorf("%s %s: status %d, want 400: %.200s", c.method, c.path, rec.Code, body)
			continue
		}
		if !strings.Contains(body, api.CodeBadRequest) || !strings.Contains(body, c.want) {
			t.Errorf("%s %s: %.300s, want bad_request naming %q", c.method, c.path, body, c.want)
		}
	}
}

// A request that did not come over the unix socket (no credentials from
// the kernel) may read, but not act or touch files.
func TestAPIUnknownCallerRefused(t *testing.T) {
	t.Parallel()
	h := apiHandler(t)
	for _, c := range []struct{ method, path, body, want string }{
		{"POST", "/v1/gc", "", `right "gc"`},
		{"POST", "/v1/policy/host", `{"policy": ""}`, `right "policy"`},
		{"POST", "/v1/activate", `{"layer": "a:1", "at": "/x", "hosts": "self", "op": "activate"}`, `right "activate"`},
		{"POST", "/v1/layers", `{"name": "a:1", "path": "/etc"}`, "no file is touched"},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(c.method, c.path, strings.NewReader(c.body)))
		if body := strings.ReplaceAll(rec.Body.String(), `\"`, `"`); !strings.Contains(body, api.CodeForbidden) || !strings.Contains(body, c.want) {
			t.Errorf("%s %s: %d %.300s, want forbidden naming %s", c.method, c.path, rec.Code, body, c.want)
		}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/layers", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /v1/layers: %d %s", rec.Code, rec.Body)
	}
}

// apiHandler runs a daemon until the test ends and returns its API handler.
func apiHandler(t *testing.T) http.Handler {
	t.Helper()
	return runDaemon(t, Config{DataDir: t.TempDir()}).Handler()
}

// runDaemon runs a daemon (listening on 127.0.0.1) until the test ends,
// once its node is open.
func runDaemon(t *testing.T, cfg Config) *Daemon {
	t.Helper()
	cfg.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	d, err := NewDaemon(DaemonConfig{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	for deadline := time.Now().Add(20 * time.Second); d.Node() == nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("daemon not ready")
		}
	}
	return d
}
