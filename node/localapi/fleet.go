package localapi

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/p2pimg/p2pimg/node/api"
)

// fleetAPI is the whole cluster as this host sees it.
type fleetAPI interface {
	// Fleet builds the fleet document now; it never fails for a part it
	// could not read (seats name their error instead).
	Fleet(ctx context.Context) (*api.Fleet, error)
	// FleetJSON is Fleet encoded, shared by every reader of a document.
	FleetJSON(ctx context.Context) ([]byte, error)
}

// Fleet event stream pacing: the default and the bounds a client may ask
// for with ?every=.
const (
	fleetEvery    = time.Second
	fleetMinEvery = 250 * time.Millisecond
	fleetMaxEvery = time.Minute
)

func (s *Server) fleetRoutes() []route {
	v := api.Version
	return []route{
		{"GET " + v + "/fleet", s.fleet},
		{"GET " + v + "/fleet/events", s.fleetEvents},
	}
}

// fleet answers the fleet document (encoded once for all its readers).
func (s *Server) fleet(w http.ResponseWriter, r *http.Request) {
	w, done := gzipped(w, r)
	defer done()
	n := s.ready(w)
	if n == nil {
		return
	}
	b, err := n.FleetJSON(r.Context())
	if err != nil {
		e := ErrorOf(err)
		s.logFailed(r, e, err)
		writeJSON(w, status(e), e)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.Write(b) // shared: never appended to
	w.Write([]byte("\n"))
}

// fleetEvents streams the fleet document as server-sent events, one
// "fleet" event every ?every= (default 1s), until the client goes.
func (s *Server) fleetEvents(w http.ResponseWriter, r *http.Request) {
	every := fleetEvery
	if q := r.URL.Query().Get("every"); q != "" {
		d, err := time.ParseDuration(q)
		if err != nil || d < fleetMinEvery || d > fleetMaxEvery {
			e := &api.Error{Code: api.CodeBadRequest, Message: fmt.Sprintf("every=%q: want a duration from %s to %s, e.g. 2s", q, fleetMinEvery, fleetMaxEvery)}
			writeJSON(w, status(e), e)
			return
		}
		every = d
	}
	if _, ok := w.(http.Flusher); !ok {
		e := &api.Error{Code: api.CodeInternal, Message: "this connection cannot stream events"}
		writeJSON(w, status(e), e)
		return
	}
	w, done := gzipped(w, r)
	defer done()
	flusher := w.(http.Flusher)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		if err := s.sendFleet(w, r.Context()); err != nil {
			return
		}
		flusher.Flush()
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
		}
	}
}

// sendFleet writes one event: the fleet, or "starting" while the store
// opens, or the error that kept it from being built.
func (s *Server) sendFleet(w http.ResponseWriter, ctx context.Context) error {
	event, b := "fleet", []byte(nil)
	var e *api.Error
	if n := s.node(); n == nil {
		e = ErrorOf(errStarting)
	} else if f, err := n.FleetJSON(ctx); err != nil {
		e = ErrorOf(err)
	} else {
		b = f
	}
	if e != nil {
		event, b = "error", mustJSON(e)
	}
	_, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b)
	return err
}

// WebHandler serves what the web view may expose on a TCP address: the
// routes that change nothing and read no local path (the fleet, the
// daemon's status, a layer name's manifest), and one that changes
// something, POST /v1/activate, which it obeys only when the request is
// signed by an operator key of the cluster file (the page signs it in the
// browser: the key never reaches the daemon). GET /v1/operator answers
// whether a request's signature proves an operator key (the page asks
// before it enables its buttons). A TCP caller has no uid, so
// neither root's rights nor the cluster file's grants apply here.
func (s *Server) WebHandler() http.Handler {
	mux := http.NewServeMux()
	operator := route{"GET " + api.Version + "/operator", s.needOperator(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"operator": operatorOf(r.Context()).String()})
	})}
	routes := slices.Concat(s.statusRoutes(), s.fleetRoutes(), s.webActivateRoutes(), []route{operator})
	for _, r := range routes {
		mux.HandleFunc(r.pattern, r.handler)
	}
	mux.HandleFunc(api.Version+"/", func(w http.ResponseWriter, r *http.Request) {
		e := &api.Error{Code: api.CodeNotFound, Message: fmt.Sprintf("no endpoint %s %s on the web address (the full API is on the daemon's unix socket)", r.Method, r.URL.Path)}
		writeJSON(w, status(e), e)
	})
	return s.guard(mux)
}

// webActivateRoutes are the activation routes of the web view: resolve a
// name (read-only) and publish an activation an operator key signed.
func (s *Server) webActivateRoutes() []route {
	v := api.Version
	var out []route
	for _, r := range s.activateRoutes() {
		switch r.pattern {
		case "GET " + v + "/resolve/{name...}":
			out = append(out, r)
		case "POST " + v + "/activate":
			out = append(out, route{r.pattern, s.needOperator(needSignedBody(r.handler))})
		}
	}
	return out
}

// needOperator refuses (403) a request that no operator key signed: on
// the web address that is the only way to a right.
func (s *Server) needOperator(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if operatorOf(r.Context()) == "" {
			err := errors.New("the web view changes nothing without an operator key: load one in the page's Operator panel (it signs the request in the browser), or use the p2pimg command on a host")
			if perr, ok := r.Context().Value(proofErrKey{}).(error); ok {
				err = fmt.Errorf("the operator key presented did not count: %w", perr)
			}
			s.cfg.Log.Warn("web request refused", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "err", err)
			e := ErrorOf(api.Forbidden(err))
			writeJSON(w, status(e), e)
			return
		}
		h(w, r)
	}
}

// gzipped compresses what is written to w when the client accepts gzip
// (browsers and Go's client do): the fleet document is large and
// repetitive (about 40x smaller at 1,000 hosts; BenchmarkFleetMatrix).
// Flush sends what was written so far, so events still arrive one by one.
// done ends the stream.
func gzipped(w http.ResponseWriter, r *http.Request) (http.ResponseWriter, func()) {
	w.Header().Add("Vary", "Accept-Encoding")
	if !acceptsGzip(r.Header.Get("Accept-Encoding")) {
		return w, func() {}
	}
	w.Header().Set("Content-Encoding", "gzip")
	zw, _ := gzip.NewWriterLevel(w, gzip.BestSpeed) // a valid level: cannot fail
	return &gzipWriter{ResponseWriter: w, zw: zw}, func() { zw.Close() }
}

func acceptsGzip(h string) bool {
	for _, part := range strings.Split(h, ",") {
		name, q, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(strings.TrimSpace(name), "gzip") && strings.ReplaceAll(strings.TrimSpace(q), " ", "") != "q=0" {
			return true
		}
	}
	return false
}

type gzipWriter struct {
	http.ResponseWriter
	zw *gzip.Writer
}

func (g *gzipWriter) Write(b []byte) (int, error) { return g.zw.Write(b) }

// Flush sends the compressed bytes so far to the client.
func (g *gzipWriter) Flush() {
	g.zw.Flush()
	if f, ok := g.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// mustJSON encodes an API error (which always encodes).
func mustJSON(e *api.Error) []byte {
	b, _ := json.Marshal(e)
	return b
}

// needSignedBody refuses (400) an activation whose record the operator did
// not sign itself. The request's signature names no daemon and nothing
// marks it used, so over plain HTTP it could be replayed to another host
// within the signature's skew; an unsigned-record request would then make
// that host activate with the request's paths. A signed record replayed is
// the same record again (the newest of an operator's records wins).
func needSignedBody(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
		var req api.ActivateRequest
		if err == nil {
			err = json.Unmarshal(b, &req)
		}
		if err != nil || len(req.Signed) == 0 {
			e := ErrorOf(api.BadRequestf("the web address publishes only activations the operator key signed (the page's Operator panel signs them): send {\"signed\": ...}, or use the p2pimg command on a host"))
			writeJSON(w, status(e), e)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
		h(w, r)
	}
}
