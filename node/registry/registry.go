// Package registry is the pull side of the OCI distribution API, served on
// every host so containerd, Docker and Podman pull images through p2pimg.
// Every blob and manifest is kept as its exact bytes, chunked into the
// chunk store as a one-file layer named by its digest (oci/blob:sha256-HEX)
// and announced like any layer, so peers fetch it with the usual machinery;
// tags are layers too (oci/ref/REPO:TAG) that point at a manifest's layer.
// Bytes come from this host's store, else from peers, else from the
// upstream registry named by containerd's ?ns= parameter.
//
// A blob no host holds yet is fetched from upstream once for the cluster:
// by the host its digest ranks first among the live mirrors, which the
// others stream it from (cohort.go). A manifest (by tag or digest) that no
// host holds is asked of upstream the same way, by the host its reference
// ranks first, which the others ask for it.
//
// It never serves bytes whose digest it has not checked: a blob's last
// chunk is held back until the whole blob has hashed to its digest. It
// never builds libp2p hosts or talks to peers itself; fetching layers is
// package fetch's, carrying blobs between mirrors package registry/relay's,
// publishing package layers'.
package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/gossip"
)

// Store is the chunk store and layer records the registry reads and writes.
type Store interface {
	// HasMany reports, for each id in order, whether it is stored.
	HasMany(ctx context.Context, ids []cid.Cid) ([]bool, error)
	// GetInto is a chunk's data, read into buf when it has room;
	// chunk.ErrNotFound when absent, chunk.ErrCorrupt when damaged.
	GetInto(ctx context.Context, id cid.Cid, buf []byte) ([]byte, error)
	// Put stores verified blocks. Idempotent.
	Put(ctx context.Context, blocks ...chunk.Block) error
	// GetManifest is a stored layer manifest; chunk.ErrNotFound when absent.
	GetManifest(ctx context.Context, id cid.Cid) (*chunk.Manifest, error)
	// GetLayer is the record of a name; chunk.ErrNotFound when absent.
	GetLayer(ctx context.Context, name chunk.Name) (chunk.Layer, error)
	// Reserve is nil when the disk has room for need more bytes and the
	// store's reserve; an error wrapping chunk.ErrNoSpace otherwise.
	Reserve(need int64) error
}

// MaxBlob bounds a blob's size, announced or not: a source that sends
// more is cut (upstream) or distrusted (a peer).
const MaxBlob = 1 << 40

// Publisher stores a layer's manifest, records it complete here and
// announces its signed mapping (package layers).
type Publisher interface {
	// Publish is idempotent apart from the mapping's publication time.
	Publish(ctx context.Context, name chunk.Name, id cid.Cid, encoded []byte, m *chunk.Manifest) (chunk.Layer, error)
}

// Fetcher makes a layer complete here from peers (package fetch).
type Fetcher interface {
	// Fetch fetches the chunks of mp.CID this host lacks, resuming; an
	// api conflict error when that layer is being fetched already.
	Fetch(ctx context.Context, name chunk.Name, mp gossip.Mapping, emit api.Emit) (*api.FetchResult, error)
	// Manifest is a layer manifest from the store, else from a peer,
	// checked against its id and stored.
	Manifest(ctx context.Context, id cid.Cid) (*chunk.Manifest, error)
	// FetchChunk fetches chunk id of layer at once, outside any fetch,
	// verifies it and stores it.
	FetchChunk(ctx context.Context, layer, id cid.Cid) ([]byte, error)
}

// Catalog is the cluster's NAME:TAG -> manifest mappings (package gossip).
type Catalog interface {
	// Lookup is the newest mapping of name the cluster knows.
	Lookup(name string) (gossip.Mapping, bool)
	// All is every name's newest mapping (tag listing).
	All() []gossip.Mapping
}

// Config configures the registry.
type Config struct {
	// Addr is where the API listens (host:port); empty: no listener, but
	// imports still keep their blobs for other hosts' mirrors.
	Addr      string
	Store     Store
	Publisher Publisher
	Fetcher   Fetcher
	Catalog   Catalog
	// Upstreams are the registries containerd's ?ns= may name.
	Upstreams Upstreams
	// Relay reaches the other mirrors, so a blob is fetched from upstream
	// once for the cluster; nil: every host fetches for itself.
	Relay Relay
	// TagTTL is how long a tag the cluster resolved is used without asking
	// upstream again (default 30s).
	TagTTL time.Duration
	Log    *slog.Logger
	Reg    prometheus.Registerer
}

// Service serves the registry API from the store, peers and upstreams.
type Service struct {
	cfg      Config
	arrivals *Arrivals
	m        *metrics
	params   chunk.Params

	// manifestFetches are the upstream manifest requests under way.
	manifestFetches singleflight.Group

	mu       sync.Mutex
	flights  map[string]*flight // by digest
	verified map[string]bool    // blob layers hashed to their digest here
	// distrusted blobs came from a peer not matching their digest: they
	// are fetched from upstream here, not through the chosen host.
	distrusted map[string]bool
	ln         net.Listener
	baseCtx    context.Context
	flying     sync.WaitGroup // flights' goroutines, waited for before Run returns
}

// New builds the registry; it starts nothing. arrivals must be poked
// whenever chunks are stored by a fetch (node wires it into the fetcher's
// store), so a blob streams as its chunks arrive.
func New(cfg Config, arrivals *Arrivals) *Service {
	if cfg.TagTTL <= 0 {
		cfg.TagTTL = 30 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Reg == nil {
		cfg.Reg = prometheus.NewRegistry()
	}
	return &Service{cfg: cfg, arrivals: arrivals, m: newMetrics(cfg.Reg), params: chunk.DefaultParams(),
		flights: map[string]*flight{}, verified: map[string]bool{}, distrusted: map[string]bool{}}
}

// Listen opens the API's listener (so a bad address fails the daemon's
// start); Run serves on it. A no-op without an address.
func (s *Service) Listen() error {
	if s.cfg.Addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("registry: listen on %s (--registry): %w", s.cfg.Addr, err)
	}
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	return nil
}

// Addr is the address the API listens on (nil when off).
func (s *Service) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Run serves the API until ctx ends (listening first if Listen was not
// called). Cancellation is not an error.
func (s *Service) Run(ctx context.Context) error {
	defer s.flying.Wait() // flights end with ctx; they use the store, closed after Run
	if s.cfg.Addr == "" {
		<-ctx.Done()
		return nil
	}
	if s.Addr() == nil {
		if err := s.Listen(); err != nil {
			return err
		}
	}
	srv := &http.Server{Handler: s.Handler(ctx), ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(s.ln) }()
	s.cfg.Log.Info("registry mirror listening", "addr", s.ln.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("registry: %w", err)
	case <-ctx.Done():
	}
	shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(shut)
	if errors.Is(err, context.DeadlineExceeded) {
		err = srv.Close()
	}
	<-errc
	return err
}

// Arrivals is how blob streams learn of chunks a fetch brings: it wakes
// them when chunks are stored, and holds verified chunks while the store
// writes them, so a stream sends them meanwhile instead of waiting for the
// write (which a commit elsewhere in the store may hold up). Its zero value
// is not usable: make one with NewArrivals.
type Arrivals struct {
	mu      sync.Mutex
	c       chan struct{}
	pending map[cid.Cid][][]byte // verified chunks being stored, by id (one per writer)
}

// NewArrivals returns an Arrivals with nobody waiting.
func NewArrivals() *Arrivals {
	return &Arrivals{c: make(chan struct{}), pending: map[cid.Cid][][]byte{}}
}

// Storing makes blocks, verified against their ids, readable by blob
// streams until Stored is called with them; the caller must not change
// their bytes before then. Safe on nil.
func (a *Arrivals) Storing(blocks []chunk.Block) {
	if a == nil {
		return
	}
	a.mu.Lock()
	for _, b := range blocks {
		a.pending[b.CID()] = append(a.pending[b.CID()], b.Data())
	}
	a.wake()
	a.mu.Unlock()
}

// Stored says the store has written blocks (or failed to): they are no
// longer read from here. It wakes everyone waiting and never blocks. Safe
// on nil.
func (a *Arrivals) Stored(blocks []chunk.Block) {
	if a == nil {
		return
	}
	a.mu.Lock()
	for _, b := range blocks {
		ds := a.pending[b.CID()]
		for i, d := range ds {
			if sameBytes(d, b.Data()) {
				ds = append(ds[:i], ds[i+1:]...)
				break
			}
		}
		if len(ds) == 0 {
			delete(a.pending, b.CID())
		} else {
			a.pending[b.CID()] = ds
		}
	}
	a.wake()
	a.mu.Unlock()
}

// sameBytes says whether a and b are the same slice (not merely equal).
func sameBytes(a, b []byte) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// wake closes the channel waiters hold. Callers hold mu.
func (a *Arrivals) wake() {
	close(a.c)
	a.c = make(chan struct{})
}

// wait is closed at the next Storing or Stored.
func (a *Arrivals) wait() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.c
}

// has says whether chunk id is being stored.
func (a *Arrivals) has(id cid.Cid) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.pending[id]) > 0
}

// read copies chunk id into buf (when it has room) if it is being stored.
func (a *Arrivals) read(id cid.Cid, buf []byte) ([]byte, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ds := a.pending[id]
	if len(ds) == 0 {
		return nil, false
	}
	return append(buf[:0], ds[0]...), true
}
