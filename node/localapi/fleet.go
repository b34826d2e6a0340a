package localapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/p2pimg/p2pimg/node/api"
)

// fleetAPI is the whole cluster as this host sees it.
type fleetAPI interface {
	// Fleet builds the fleet document now; it never fails for a part it
	// could not read (seats name their error instead).
	Fleet(ctx context.Context) (*api.Fleet, error)
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
		{"GET " + v + "/fleet", s.plain(func(ctx context.Context, n Node, _ *http.Request) (any, error) {
			return n.Fleet(ctx)
		})},
		{"GET " + v + "/fleet/events", s.fleetEvents},
	}
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
	flusher, ok := w.(http.Flusher)
	if !ok {
		e := &api.Error{Code: api.CodeInternal, Message: "this connection cannot stream events"}
		writeJSON(w, status(e), e)
		return
	}
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
	event, v := "fleet", any(nil)
	if n := s.node(); n == nil {
		event, v = "error", ErrorOf(errStarting)
	} else if f, err := n.Fleet(ctx); err != nil {
		event, v = "error", ErrorOf(err)
	} else {
		v = f
	}
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b)
	return err
}

// ReadOnlyHandler serves only the routes that change nothing and read no
// local path (the fleet and the daemon's status): what the web view may
// expose on a TCP address.
func (s *Server) ReadOnlyHandler() http.Handler {
	mux := http.NewServeMux()
	for _, r := range append(s.statusRoutes(), s.fleetRoutes()...) {
		mux.HandleFunc(r.pattern, r.handler)
	}
	mux.HandleFunc(api.Version+"/", func(w http.ResponseWriter, r *http.Request) {
		e := &api.Error{Code: api.CodeNotFound, Message: fmt.Sprintf("no endpoint %s %s on the web address (the full API is on the daemon's unix socket)", r.Method, r.URL.Path)}
		writeJSON(w, status(e), e)
	})
	return mux
}
