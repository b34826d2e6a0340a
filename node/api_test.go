package node

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/p2pimg/p2pimg/node/api"
)

// The local API refuses bad JSON, unknown fields, huge bodies and names
// with path tricks, each with a bad_request naming the problem.
func TestAPIRefusesBadRequests(t *testing.T) {
	dir := t.TempDir()
	d, err := NewDaemon(DaemonConfig{Config: Config{DataDir: dir, Listen: []string{"/ip4/127.0.0.1/tcp/0"}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for deadline := time.Now().Add(20 * time.Second); d.Node() == nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("daemon not ready")
		}
	}
	h := d.Handler()
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
		h.ServeHTTP(rec, httptest.NewRequest(c.method, c.path, strings.NewReader(c.body)))
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
