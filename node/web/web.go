// Package web serves the daemon's web view on a TCP address: embedded
// static files (no build step, nothing from elsewhere) that read the
// fleet from the local API's read-only routes and follow it live with
// server-sent events, Prometheus metrics beside it, and pprof only when
// asked for. It never serves a route that reads a local path; the only
// requests that change anything are POSTs to the API, which obeys them
// only when an operator key signed them (the page signs in the browser).
package web

import (
	"embed"
	"io/fs"
	"net/http"
	"net/http/pprof"
	"strings"
)

//go:embed static
var static embed.FS

// Config says what the web server serves beside the page.
type Config struct {
	// API serves the routes under /v1/: the fleet and its events, the
	// daemon's status, and activations an operator key signed.
	API http.Handler
	// Metrics serves /metrics (nil: not served).
	Metrics http.Handler
	// Pprof serves Go's profiles under /debug/pprof/.
	Pprof bool
}

// Handler is the web server's handler.
func Handler(cfg Config) http.Handler {
	files, _ := fs.Sub(static, "static") // the directory is embedded: cannot fail
	mux := http.NewServeMux()
	mux.Handle("/", http.FileServerFS(files))
	mux.Handle("/v1/", cfg.API)
	if cfg.Metrics != nil {
		mux.Handle("/metrics", cfg.Metrics)
	}
	if cfg.Pprof {
		Pprof(mux)
	}
	return guard(mux)
}

// Pprof adds Go's profiles under /debug/pprof/ to mux.
func Pprof(mux *http.ServeMux) {
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}

// guard answers GET and HEAD, and POST only under /v1/ (where the API
// decides: it refuses anything not signed by an operator key), and tells
// browsers to load nothing from elsewhere and not to frame the page.
func guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet, r.Method == http.MethodHead:
		case r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/v1/"):
		default:
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "the web view only reads, and activates layers when an operator key signs the request: use the page's Operator panel or the p2pimg command", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		next.ServeHTTP(w, r)
	})
}
