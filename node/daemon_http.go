package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/p2pimg/p2pimg/node/web"
)

// tcpServer is one of the daemon's TCP servers (web view, metrics) with
// its listener, opened before the store so it answers "starting" early.
type tcpServer struct {
	name string
	ln   net.Listener
	srv  *http.Server
}

// listenTCP opens the web view's and the metrics' addresses. The web view
// serves the page, the read-only API routes and /metrics; the metrics
// address only /metrics. Either serves pprof only with Pprof.
func (d *Daemon) listenTCP() ([]tcpServer, error) {
	var out []tcpServer
	closeAll := func() {
		for _, s := range out {
			s.ln.Close()
		}
	}
	if d.cfg.HTTP != "" {
		ln, err := net.Listen("tcp", d.cfg.HTTP)
		if err != nil {
			return nil, fmt.Errorf("daemon: web view on %s (--http): %w", d.cfg.HTTP, err)
		}
		d.webURL = webURL(ln.Addr())
		h := web.Handler(web.Config{API: d.api().WebHandler(), Metrics: d.metrics(), Pprof: d.cfg.Pprof})
		out = append(out, tcpServer{"web view", ln, &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}})
	}
	if d.cfg.Metrics != "" {
		ln, err := net.Listen("tcp", d.cfg.Metrics)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("daemon: metrics on %s (--metrics): %w", d.cfg.Metrics, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", d.metrics())
		if d.cfg.Pprof {
			web.Pprof(mux)
		}
		out = append(out, tcpServer{"metrics", ln, &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}})
	}
	return out, nil
}

// serve runs s until ctx ends.
func (s tcpServer) serve(ctx context.Context) error {
	go func() { <-ctx.Done(); s.srv.Close() }()
	if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("daemon: %s server: %w", s.name, err)
	}
	return nil
}

// metrics serves the node's Prometheus registry ("starting" until the
// node is open).
func (d *Daemon) metrics() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := d.node.Load()
		if n == nil {
			http.Error(w, "the daemon is starting", http.StatusServiceUnavailable)
			return
		}
		promhttp.HandlerFor(n.Registry(), promhttp.HandlerOpts{}).ServeHTTP(w, r)
	})
}

// webURL is the URL a person opens for a listener: a wildcard address
// shows as this machine's hostname.
func webURL(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return "http://" + a.String() + "/"
	}
	host := ta.IP.String()
	if ta.IP.IsUnspecified() {
		host, _ = os.Hostname()
	}
	return "http://" + net.JoinHostPort(host, strconv.Itoa(ta.Port)) + "/"
}
