package web

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHandler(t *testing.T) {
	t.Parallel()
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("api " + r.URL.Path)) })
	metrics := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("metrics")) })
	for _, c := range []struct {
		name       string
		cfg        Config
		method     string
		path       string
		code       int
		bodyPrefix string
	}{
		{"page", Config{API: api}, "GET", "/", 200, "<!doctype html>"},
		{"script", Config{API: api}, "GET", "/app.js", 200, "// The fleet view"},
		{"api", Config{API: api}, "GET", "/v1/fleet", 200, "api /v1/fleet"},
		{"metrics", Config{API: api, Metrics: metrics}, "GET", "/metrics", 200, "metrics"},
		{"no metrics", Config{API: api}, "GET", "/metrics", 404, ""},
		{"no pprof", Config{API: api}, "GET", "/debug/pprof/", 404, ""},
		{"pprof", Config{API: api, Pprof: true}, "GET", "/debug/pprof/", 200, ""},
		{"post to the api", Config{API: api}, "POST", "/v1/activate", 200, "api /v1/activate"},
		{"post elsewhere", Config{API: api}, "POST", "/", 405, "the web view only reads"},
		{"delete", Config{API: api}, "DELETE", "/v1/layers/x", 405, "the web view only reads"},
		{"put", Config{API: api}, "PUT", "/v1/activate", 405, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			Handler(c.cfg).ServeHTTP(rec, httptest.NewRequest(c.method, c.path, nil))
			if rec.Code != c.code || !strings.HasPrefix(rec.Body.String(), c.bodyPrefix) {
				t.Fatalf("%s %s: %d %.60q, want %d %q", c.method, c.path, rec.Code, rec.Body.String(), c.code, c.bodyPrefix)
			}
			if c.code == 200 && !strings.Contains(rec.Header().Get("Content-Security-Policy"), "default-src 'self'") {
				t.Fatalf("%s: no content security policy: %v", c.path, rec.Header())
			}
		})
	}
}
