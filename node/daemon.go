package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/p2pimg/p2pimg/node/localapi"
	"golang.org/x/sync/errgroup"
)

// DaemonConfig configures a daemon.
type DaemonConfig struct {
	Config        // the node's; DataDir is required
	Socket string // default DataDir/p2pimg.sock
	// SocketGroup, when set, may use the API too (socket mode 0660 and
	// owned by that group); otherwise only the daemon's user may.
	SocketGroup string
	Metrics     string // address for Prometheus metrics (host:port); empty = off
	// HTTP is the web view's address (host:port; port 0 picks a free
	// one); empty = off.
	HTTP string
	// Pprof serves Go's profiles on the web and metrics addresses.
	Pprof   bool
	Version string
	// Notify is systemd's notify socket ($NOTIFY_SOCKET; empty: not run
	// by systemd as Type=notify): READY=1 once the node is open,
	// STOPPING=1 when it stops, and WATCHDOG=1 every Watchdog while the
	// API answers (0: systemd set no watchdog).
	Notify   string
	Watchdog time.Duration
}

// Daemon serves one Node on the local API socket.
type Daemon struct {
	cfg     DaemonConfig
	node    atomic.Pointer[Node]
	started time.Time
	webURL  string // of the web view, once listening
}

// Handler is the local API's HTTP handler for this daemon.
func (d *Daemon) Handler() http.Handler { return d.api().Handler() }

func (d *Daemon) api() *localapi.Server {
	return localapi.New(localapi.Config{DataDir: d.cfg.DataDir, Version: d.cfg.Version, Started: d.started, Log: d.cfg.Log, Web: d.webURL, Cluster: d.cfg.Cluster},
		func() localapi.Node {
			if n := d.node.Load(); n != nil {
				return n
			}
			return nil
		})
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
// closes everything it opened. A part that fails (the node, the API
// server, the metrics server) stops the others and is the error.
// Cancellation is not an error.
func (d *Daemon) Run(ctx context.Context) (err error) {
	d.started = time.Now().UTC()
	if err := os.MkdirAll(d.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("daemon: data directory: %w", err)
	}
	ln, err := listen(d.cfg.Socket, d.cfg.SocketGroup)
	if err != nil {
		return err
	}
	defer os.Remove(d.cfg.Socket)
	tcp, err := d.listenTCP()
	if err != nil {
		ln.Close()
		return err
	}
	// Requests run until the daemon stops, not until ctx ends: in-flight
	// adds and checkouts are cancelled when the node shuts down.
	opCtx, cancelOps := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelOps()
	srv := &http.Server{
		Handler:           d.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return opCtx },
		ConnContext:       localapi.ConnContext, // who calls: every request acts for its caller
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("daemon: api server: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		cancelOps()
		shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return srv.Shutdown(shutCtx)
	})
	d.cfg.Log.Info("api listening", "socket", d.cfg.Socket)
	for _, s := range tcp {
		g.Go(func() error { return s.serve(gctx) })
	}
	if d.webURL != "" {
		d.cfg.Log.Info("web view", "url", d.webURL)
	}
	g.Go(func() error { return d.runNode(gctx) })
	err = g.Wait()
	d.cfg.Log.Info("daemon stopped")
	return err
}

// runNode opens the node, runs it until ctx ends, and closes it.
func (d *Daemon) runNode(ctx context.Context) (err error) {
	n, err := Open(d.cfg.Config)
	if err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	defer func() { err = errors.Join(err, n.Close()) }()
	d.node.Store(n)
	d.cfg.Log.Info("daemon ready", "data", d.cfg.DataDir, "peer", n.ID().String(), "addrs", n.Addrs())
	if err := sdNotify(d.cfg.Notify, "READY=1\nSTATUS=ready: peer "+n.ID().String()); err != nil {
		d.cfg.Log.Warn("systemd", "err", err)
	}
	defer sdNotify(d.cfg.Notify, "STOPPING=1")
	ctx, stop := context.WithCancel(ctx)
	g, ctx := errgroup.WithContext(ctx)
	if d.cfg.Notify != "" && d.cfg.Watchdog > 0 {
		g.Go(func() error { return d.watchdog(ctx, d.cfg.Watchdog) })
	}
	g.Go(func() error {
		defer stop() // the node ending ends the watchdog
		if err := n.Run(ctx); err != nil {
			return fmt.Errorf("daemon: node: %w", err)
		}
		return nil
	})
	return g.Wait()
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
