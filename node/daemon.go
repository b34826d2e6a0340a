package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/p2pimg/p2pimg/node/api"
)

// DaemonConfig configures a daemon.
type DaemonConfig struct {
	Config        // the node's; DataDir is required
	Socket string // default DataDir/p2pimg.sock
	// SocketGroup, when set, may use the API too (socket mode 0660 and
	// owned by that group); otherwise only the daemon's user may.
	SocketGroup string
	Metrics     string // address for Prometheus metrics (host:port); empty = off
	Version     string
}

// Daemon serves one Node on the local API socket.
type Daemon struct {
	cfg     DaemonConfig
	node    atomic.Pointer[Node]
	started time.Time
}

// NewDaemon checks the config and fills in defaults. It starts nothing.
func NewDaemon(cfg DaemonConfig) (*Daemon, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("daemon: a data directory is required (--data DIR)")
	}
	abs, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	cfg.DataDir = abs
	if cfg.Socket == "" {
		cfg.Socket = filepath.Join(cfg.DataDir, "p2pimg.sock")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Daemon{cfg: cfg}, nil
}

// Node is the running node, or nil while the daemon is starting.
func (d *Daemon) Node() *Node { return d.node.Load() }

// Socket is the path of the API socket.
func (d *Daemon) Socket() string { return d.cfg.Socket }

// Run opens the API socket first (so clients see "starting" rather than
// "connection refused"), then the store, and serves until ctx ends. It
// closes everything it opened. Cancellation is not an error.
func (d *Daemon) Run(ctx context.Context) (err error) {
	d.started = time.Now().UTC()
	if err := os.MkdirAll(d.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("daemon: data directory: %w", err)
	}
	ln, err := listen(d.cfg.Socket, d.cfg.SocketGroup)
	if err != nil {
		return err
	}
	opCtx, cancelOps := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelOps()
	srv := &http.Server{
		Handler:           d.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return opCtx },
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	d.cfg.Log.Info("api listening", "socket", d.cfg.Socket)

	defer func() {
		cancelOps() // in-flight adds and checkouts stop
		shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err = errors.Join(err, srv.Shutdown(shutCtx))
		if n := d.node.Load(); n != nil {
			err = errors.Join(err, n.Close())
		}
		os.Remove(d.cfg.Socket)
		if e := <-served; !errors.Is(e, http.ErrServerClosed) {
			err = errors.Join(err, e)
		}
		d.cfg.Log.Info("daemon stopped")
	}()

	n, err := Open(d.cfg.Config)
	if err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	d.node.Store(n)
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	ran := make(chan error, 1)
	go func() { ran <- n.Run(runCtx) }()
	defer func() { stopRun(); err = errors.Join(err, <-ran) }()
	if d.cfg.Metrics != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(n.Registry(), promhttp.HandlerOpts{}))
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		ms := &http.Server{Addr: d.cfg.Metrics, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		mln, err := net.Listen("tcp", d.cfg.Metrics)
		if err != nil {
			return fmt.Errorf("daemon: metrics on %s: %w", d.cfg.Metrics, err)
		}
		go ms.Serve(mln)
		defer ms.Close()
	}
	d.cfg.Log.Info("daemon ready", "data", d.cfg.DataDir, "peer", n.ID().String(), "addrs", n.Addrs())
	select {
	case <-ctx.Done():
		return nil
	case e := <-ran:
		ran <- e
		return fmt.Errorf("daemon: node: %w", e)
	case e := <-served:
		served <- e
		return fmt.Errorf("daemon: api server: %w", e)
	}
}

// listen opens the unix socket, replacing a stale one but never one that a
// running daemon still answers on.
func listen(path, group string) (net.Listener, error) {
	gid := -1
	if group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			return nil, fmt.Errorf("daemon: socket group %q: %w", group, err)
		}
		if gid, err = strconv.Atoi(g.Gid); err != nil {
			return nil, fmt.Errorf("daemon: socket group %q: gid %q", group, g.Gid)
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("daemon: socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("daemon: another daemon is already serving %s", path)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("daemon: listen on %s: %w", path, err)
	}
	// The API can read and write any local path as the daemon's user: only
	// that user may talk to it.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("daemon: socket permissions: %w", err)
	}
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("daemon: socket group %q: %w", group, err)
		}
		if err := os.Chmod(path, 0o660); err != nil {
			ln.Close()
			return nil, fmt.Errorf("daemon: socket permissions: %w", err)
		}
	}
	return ln, nil
}

const maxBody = 1 << 20

func (d *Daemon) routes() http.Handler {
	mux := http.NewServeMux()
	v := api.Version
	mux.HandleFunc("GET "+v+"/status", func(w http.ResponseWriter, r *http.Request) {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		st := api.Status{State: "starting", PID: os.Getpid(), DataDir: d.cfg.DataDir, Started: d.started, Version: d.cfg.Version,
			Goroutines: runtime.NumGoroutine(), HeapBytes: ms.HeapAlloc}
		if d.node.Load() != nil {
			st.State = "ready"
		}
		writeJSON(w, http.StatusOK, st)
	})
	mux.HandleFunc("GET "+v+"/layers", d.plain(func(ctx context.Context, n *Node, _ *http.Request) (any, error) {
		return n.Layers(ctx)
	}))
	mux.HandleFunc("DELETE "+v+"/layers/{name...}", d.plain(func(ctx context.Context, n *Node, r *http.Request) (any, error) {
		return struct{}{}, n.Remove(ctx, r.PathValue("name"))
	}))
	mux.HandleFunc("POST "+v+"/gc", d.plain(func(ctx context.Context, n *Node, _ *http.Request) (any, error) {
		return n.GC(ctx)
	}))
	mux.HandleFunc("GET "+v+"/common", d.plain(func(ctx context.Context, n *Node, r *http.Request) (any, error) {
		return n.Common(ctx, r.URL.Query()["layer"])
	}))
	mux.HandleFunc("GET "+v+"/stats", d.plain(func(ctx context.Context, n *Node, _ *http.Request) (any, error) {
		return n.Stats(ctx)
	}))
	mux.HandleFunc("POST "+v+"/layers", d.stream(func(ctx context.Context, n *Node, r *http.Request, emit Emit) (any, error) {
		var req api.AddRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return n.Add(ctx, req, emit)
	}))
	mux.HandleFunc("POST "+v+"/checkout", d.stream(func(ctx context.Context, n *Node, r *http.Request, emit Emit) (any, error) {
		var req api.CheckoutRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return n.Checkout(ctx, req, emit)
	}))
	mux.HandleFunc("GET "+v+"/id", d.plain(func(ctx context.Context, n *Node, _ *http.Request) (any, error) {
		return n.Identity(), nil
	}))
	mux.HandleFunc("GET "+v+"/peers", d.plain(func(ctx context.Context, n *Node, _ *http.Request) (any, error) {
		return n.Peers(), nil
	}))
	mux.HandleFunc("GET "+v+"/catalog", d.plain(func(ctx context.Context, n *Node, _ *http.Request) (any, error) {
		return n.Catalog(), nil
	}))
	mux.HandleFunc("POST "+v+"/activate", d.plain(func(ctx context.Context, n *Node, r *http.Request) (any, error) {
		var req api.ActivateRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return n.Activate(ctx, req)
	}))
	mux.HandleFunc("GET "+v+"/activations", d.plain(func(ctx context.Context, n *Node, _ *http.Request) (any, error) {
		return n.Activations(), nil
	}))
	mux.HandleFunc("GET "+v+"/resolve/{name...}", d.plain(func(ctx context.Context, n *Node, r *http.Request) (any, error) {
		id, err := n.ResolveLayer(ctx, r.PathValue("name"))
		return map[string]string{"cid": id}, err
	}))
	mux.HandleFunc("POST "+v+"/partition", d.plain(func(ctx context.Context, n *Node, r *http.Request) (any, error) {
		var req api.PartitionRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return struct{}{}, n.Partition(req.Peers)
	}))
	mux.HandleFunc("POST "+v+"/fetch", d.stream(func(ctx context.Context, n *Node, r *http.Request, emit Emit) (any, error) {
		var req api.FetchRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return n.Fetch(ctx, req.Name, emit)
	}))
	mux.HandleFunc("POST "+v+"/verify", d.stream(func(ctx context.Context, n *Node, _ *http.Request, emit Emit) (any, error) {
		return n.Verify(ctx, emit)
	}))
	mux.HandleFunc("POST "+v+"/license/install", d.plain(func(ctx context.Context, n *Node, r *http.Request) (any, error) {
		var req api.LicenseInstallRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return n.InstallLicense(ctx, req.License)
	}))
	mux.HandleFunc("POST "+v+"/license/claim", d.plain(func(ctx context.Context, n *Node, r *http.Request) (any, error) {
		var req api.ClaimRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return n.Claim(ctx, req)
	}))
	mux.HandleFunc("POST "+v+"/license/release", d.plain(func(ctx context.Context, n *Node, r *http.Request) (any, error) {
		var req api.ReleaseRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return n.Release(ctx, req)
	}))
	mux.HandleFunc("GET "+v+"/license/check", d.plain(func(ctx context.Context, n *Node, r *http.Request) (any, error) {
		tok, err := strconv.ParseUint(r.URL.Query().Get("token"), 10, 64)
		if err != nil || tok == 0 {
			return nil, badRequestf("check: token %q is not a grant token (a positive number from `p2pimg license claim`)", r.URL.Query().Get("token"))
		}
		return n.Check(ctx, tok)
	}))
	mux.HandleFunc("GET "+v+"/license", d.plain(func(ctx context.Context, n *Node, _ *http.Request) (any, error) {
		return n.Licenses(ctx)
	}))
	mux.HandleFunc("POST "+v+"/policy/host", d.plain(func(ctx context.Context, n *Node, r *http.Request) (any, error) {
		var req api.PolicyRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return n.SetHostPolicy(ctx, req.Policy)
	}))
	mux.HandleFunc("POST "+v+"/policy/layer", d.plain(func(ctx context.Context, n *Node, r *http.Request) (any, error) {
		var req api.PolicyRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return n.SetLayerPolicy(ctx, req.Name, req.Policy)
	}))
	mux.HandleFunc("GET "+v+"/policy/show", d.plain(func(ctx context.Context, n *Node, r *http.Request) (any, error) {
		return n.PolicyShow(ctx, r.URL.Query().Get("name"), r.URL.Query().Get("host"))
	}))
	mux.HandleFunc("GET "+v+"/policy/check", d.plain(func(ctx context.Context, n *Node, _ *http.Request) (any, error) {
		return n.PolicyCheck(ctx), nil
	}))
	mux.HandleFunc("GET "+v+"/diff/{name...}", d.plain(func(ctx context.Context, n *Node, r *http.Request) (any, error) {
		return n.Diff(ctx, r.PathValue("name"), r.URL.Query().Get("host"))
	}))
	mux.HandleFunc("POST "+v+"/commit", d.stream(func(ctx context.Context, n *Node, r *http.Request, emit Emit) (any, error) {
		var req api.CommitRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return n.Commit(ctx, req, emit)
	}))
	mux.HandleFunc("POST "+v+"/split", d.plain(func(ctx context.Context, n *Node, r *http.Request) (any, error) {
		var req api.SplitRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return n.Split(ctx, req)
	}))
	mux.HandleFunc("POST "+v+"/rebase", d.plain(func(ctx context.Context, n *Node, r *http.Request) (any, error) {
		var req api.RebaseRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return n.Rebase(ctx, req)
	}))
	mux.HandleFunc("POST "+v+"/import", d.stream(func(ctx context.Context, n *Node, r *http.Request, emit Emit) (any, error) {
		var req api.ImportRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return n.Import(ctx, req, emit)
	}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, &api.Error{Code: api.CodeNotFound, Message: fmt.Sprintf("no API endpoint %s %s (this daemon speaks %s)", r.Method, r.URL.Path, api.Version)})
	})
	return mux
}

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequestf("request body: %v", err)
	}
	return nil
}

func status(e *api.Error) int {
	switch e.Code {
	case api.CodeBadRequest:
		return http.StatusBadRequest
	case api.CodeNotFound:
		return http.StatusNotFound
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

// ready returns the node, or answers "starting" and returns nil while the
// store is still opening.
func (d *Daemon) ready(w http.ResponseWriter) *Node {
	n := d.node.Load()
	if n == nil {
		e := apiError(errStarting)
		writeJSON(w, status(e), e)
	}
	return n
}

func (d *Daemon) plain(fn func(context.Context, *Node, *http.Request) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		n := d.ready(w)
		if n == nil {
			return
		}
		v, err := fn(r.Context(), n, r)
		if err != nil {
			e := apiError(err)
			d.cfg.Log.Warn("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			writeJSON(w, status(e), e)
			return
		}
		writeJSON(w, http.StatusOK, v)
	}
}

// stream answers with newline-delimited JSON events; the last one is the
// result or the error.
func (d *Daemon) stream(fn func(context.Context, *Node, *http.Request, Emit) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		n := d.ready(w)
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
			d.cfg.Log.Warn("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			emit(api.Event{Error: apiError(err)})
			return
		}
		emit(api.Event{Result: v})
	}
}
