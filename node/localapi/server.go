// Package localapi is the daemon's local API: HTTP/JSON over the unix
// socket, versioned under /v1/. Its routes are a table, split by feature
// file; each feature declares the part of the node it calls. It decodes
// requests strictly, turns errors into API codes, and streams the events
// of long operations. It holds no state of its own and never acts except
// through the node.
package localapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/tree"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/cluster"
)

// Node is everything the routes call, one interface per feature file.
type Node interface {
	layerAPI
	clusterAPI
	activateAPI
	seatAPI
	policyAPI
	fleetAPI
}

// Config configures the API server.
type Config struct {
	DataDir string
	Version string
	Started time.Time
	Log     *slog.Logger
	// Cluster lists the operator keys and grants that give rights to
	// callers other than root and the daemon's user (nil: none).
	Cluster *cluster.Config
	// Web is the URL of the daemon's web view (empty: off).
	Web string
}

// Server serves the local API for the node that node returns (nil while
// the daemon is starting: requests then get "starting").
type Server struct {
	cfg  Config
	node func() Node
}

// New returns the API server; it listens on nothing (see Handler).
func New(cfg Config, node func() Node) *Server { return &Server{cfg: cfg, node: node} }

// route is one row of the table: a method and path pattern and its handler.
type route struct {
	pattern string
	handler http.HandlerFunc
}

// Handler is the API's HTTP handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	for _, r := range slices.Concat(s.statusRoutes(), s.layerRoutes(), s.clusterRoutes(), s.activateRoutes(), s.seatRoutes(), s.policyRoutes(), s.fleetRoutes()) {
		mux.HandleFunc(r.pattern, r.handler)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, &api.Error{Code: api.CodeNotFound, Message: fmt.Sprintf("no API endpoint %s %s (this daemon speaks %s)", r.Method, r.URL.Path, api.Version)})
	})
	return s.guard(mux)
}

func (s *Server) statusRoutes() []route {
	return []route{{"GET " + api.Version + "/status", func(w http.ResponseWriter, r *http.Request) {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		st := api.Status{State: api.DaemonStarting, PID: os.Getpid(), DataDir: s.cfg.DataDir, Started: s.cfg.Started, Version: s.cfg.Version,
			Goroutines: runtime.NumGoroutine(), HeapBytes: ms.HeapAlloc, Web: s.cfg.Web}
		if s.node() != nil {
			st.State = api.DaemonReady
		}
		writeJSON(w, http.StatusOK, st)
	}}}
}

// maxBody bounds a request body.
const maxBody = 1 << 20

// Decode reads a request body strictly: at most 1 MiB, no unknown fields.
func Decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return api.BadRequestf("request body: %v", err)
	}
	return nil
}

// ErrorOf turns any error into the API's form: the code a service marked
// it with, else one read from what it wraps.
func ErrorOf(err error) *api.Error {
	code := api.CodeOf(err)
	switch {
	case code != "":
	case errors.Is(err, chunk.ErrNotFound):
		code = api.CodeNotFound
	case errors.Is(err, tree.ErrNotEmpty):
		code = api.CodeConflict
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, chunk.ErrNoSpace):
		code = api.CodeNoSpace
	default:
		code = api.CodeInternal
	}
	msg := err.Error()
	if errors.Is(err, syscall.ENOSPC) {
		msg += " (the disk holding the data directory is full: free space and run the command again; nothing was half-written)"
	}
	return &api.Error{Code: code, Message: msg}
}

func status(e *api.Error) int {
	switch e.Code {
	case api.CodeBadRequest:
		return http.StatusBadRequest
	case api.CodeNotFound:
		return http.StatusNotFound
	case api.CodeForbidden:
		return http.StatusForbidden
	case api.CodeConflict:
		return http.StatusConflict
	case api.CodeStarting:
		return http.StatusServiceUnavailable
	case api.CodeNoSpace:
		return http.StatusInsufficientStorage
	}
	return http.StatusInternalServerError
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

var errStarting = api.Coded(api.CodeStarting, errors.New("the daemon is starting (opening its store); try again in a moment"))

// ready returns the node, or answers "starting" and returns nil while the
// store is still opening.
func (s *Server) ready(w http.ResponseWriter) Node {
	n := s.node()
	if n == nil {
		e := ErrorOf(errStarting)
		writeJSON(w, status(e), e)
	}
	return n
}

// plain answers with one JSON value.
func (s *Server) plain(fn func(context.Context, Node, *http.Request) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		n := s.ready(w)
		if n == nil {
			return
		}
		v, err := fn(r.Context(), n, r)
		if err != nil {
			e := ErrorOf(err)
			s.logFailed(r, e, err)
			writeJSON(w, status(e), e)
			return
		}
		writeJSON(w, http.StatusOK, v)
	}
}

// stream answers with newline-delimited JSON events; the last one is the
// result or the error.
func (s *Server) stream(fn func(context.Context, Node, *http.Request, api.Emit) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		n := s.ready(w)
		if n == nil {
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		var mu sync.Mutex
		enc := json.NewEncoder(w)
		flusher, _ := w.(http.Flusher)
		emit := func(ev api.Event) {
			mu.Lock()
			defer mu.Unlock()
			enc.Encode(ev)
			if flusher != nil {
				flusher.Flush()
			}
		}
		v, err := fn(r.Context(), n, r, emit)
		if err != nil {
			e := ErrorOf(err)
			s.logFailed(r, e, err)
			emit(api.Event{Error: e})
			return
		}
		emit(api.Event{Result: v})
	}
}

// logFailed logs a failed request: a warning when the daemon failed
// (internal, no space), at debug level when the caller asked for
// something wrong or absent (a typo is the client's, not the daemon's).
func (s *Server) logFailed(r *http.Request, e *api.Error, err error) {
	lv := slog.LevelDebug
	if e.Code == api.CodeInternal || e.Code == api.CodeNoSpace {
		lv = slog.LevelWarn
	}
	s.cfg.Log.Log(r.Context(), lv, "request failed", "method", r.Method, "path", r.URL.Path, "code", e.Code, "err", err)
}

// body decodes the request into a new T and calls fn with it.
func body[T any](fn func(context.Context, Node, T) (any, error)) func(context.Context, Node, *http.Request) (any, error) {
	return func(ctx context.Context, n Node, r *http.Request) (any, error) {
		var req T
		if err := Decode(r, &req); err != nil {
			return nil, err
		}
		return fn(ctx, n, req)
	}
}

// streamBody is body for streamed answers.
func streamBody[T any](fn func(context.Context, Node, T, api.Emit) (any, error)) func(context.Context, Node, *http.Request, api.Emit) (any, error) {
	return func(ctx context.Context, n Node, r *http.Request, emit api.Emit) (any, error) {
		var req T
		if err := Decode(r, &req); err != nil {
			return nil, err
		}
		return fn(ctx, n, req, emit)
	}
}
