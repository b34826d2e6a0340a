package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/fetch"
)

// Where a blob's bytes came from (a metrics label).
const (
	srcLocal    = "local"
	srcPeer     = "peer"
	srcUpstream = "upstream"
	srcNone     = "none"
)

// firstChunkWait bounds the early fetch of a blob's first chunk from peers.
const firstChunkWait = 5 * time.Second

// flight is one fetch of a blob this host lacks, from peers or upstream,
// that every request for the blob follows meanwhile: chunks are streamed
// as they are stored, in order.
type flight struct {
	digest string
	src    string
	ready  chan struct{} // closed once size and (for peers) refs are known, or on failure
	done   chan struct{} // closed at the end; err says how it ended

	mu      sync.Mutex
	direct  bool   // fetches upstream itself, never through the chosen host (it was asked as that host)
	via     string // the host this fetch streams the blob from (registry relay), if any
	tail    string // the last host following this fetch, that the next one asking is sent to
	known   bool   // every ref is known from the start (peers)
	refs    []chunk.Ref
	size    int64 // -1: unknown until done
	err     error
	changed chan struct{} // closed and replaced when refs grow
}

func newFlight(d string) *flight {
	return &flight{digest: d, ready: make(chan struct{}), done: make(chan struct{}), size: -1, changed: make(chan struct{})}
}

// setReady publishes what is known before the first chunk.
func (f *flight) setReady(src string, size int64, refs []chunk.Ref) {
	f.mu.Lock()
	f.src, f.size = src, size
	if refs != nil {
		f.known, f.refs = true, refs
	}
	f.mu.Unlock()
	close(f.ready)
}

func (f *flight) add(r chunk.Ref) {
	f.mu.Lock()
	f.refs = append(f.refs, r)
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

func (f *flight) finish(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
	select {
	case <-f.ready:
	default:
		close(f.ready)
	}
	close(f.done) // under mu, as next reads it: no chunk is added after
}

// closed says whether c is closed.
func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func (f *flight) failed() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// next is chunk i of the blob once it is stored; ok is false past the
// last chunk. It waits for the chunk, for the flight's end, or for ctx.
func (s *Service) next(ctx context.Context, f *flight, i int) (ref chunk.Ref, ok bool, err error) {
	for {
		f.mu.Lock()
		known, n, changed := f.known, len(f.refs), f.changed
		done := closed(f.done) // read under f.mu: every chunk is added before the end
		var r chunk.Ref
		if i < n {
			r = f.refs[i]
		}
		f.mu.Unlock()
		if done {
			if ferr := f.failed(); ferr != nil {
				return r, false, ferr
			}
		}
		if !known { // upstream: refs are appended once stored
			if i < n {
				return r, true, nil
			}
			if done {
				return r, false, nil
			}
			// Both may be ready at once when the last chunks came with the
			// end: look again rather than end on a stale count.
			select {
			case <-f.done:
			case <-changed:
			case <-ctx.Done():
				return r, false, ctx.Err()
			}
			continue
		}
		if i >= n {
			return r, false, nil
		}
		arrived := s.arrivals.wait() // before looking, so no wake-up is missed
		if s.arrivals.has(r.CID) {
			return r, true, nil
		}
		has, err := s.cfg.Store.HasMany(ctx, []cid.Cid{r.CID})
		if err != nil {
			return r, false, err
		}
		if has[0] {
			return r, true, nil
		}
		select {
		case <-arrived:
		case <-f.done:
		case <-ctx.Done():
			return r, false, ctx.Err()
		}
	}
}

// flightFor joins the fetch of blob d under way, or starts one from peers
// (when the cluster has it) else from the upstream ns names, through the
// host the cluster chose to fetch d from there.
func (s *Service) flightFor(d, ns, repo string) *flight {
	base := s.base()
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.flights[d]; f != nil {
		return f
	}
	return s.startLocked(base, d, ns, repo, false)
}

// startLocked starts a flight of blob d that runs until base ends; direct
// ones fetch from upstream here rather than through the chosen host.
// Callers hold s.mu.
func (s *Service) startLocked(base context.Context, d, ns, repo string, direct bool) *flight {
	f := newFlight(d)
	f.direct = direct
	s.flights[d] = f
	s.flying.Add(1)
	go func() {
		defer s.flying.Done()
		err := s.fly(base, f, ns, repo)
		if err != nil && !errors.Is(err, errUpstreamMissing) && !errors.Is(err, chunk.ErrNotFound) {
			s.cfg.Log.Warn("registry: blob fetch failed", "digest", d, "ns", ns, "err", err)
		}
		s.mu.Lock()
		delete(s.flights, d) // first: whoever sees it end starts afresh
		s.mu.Unlock()
		f.finish(err)
	}()
	return f
}

// fly fetches blob d for f: peers first, then upstream.
func (s *Service) fly(ctx context.Context, f *flight, ns, repo string) error {
	var peerErr error
	if mp, ok := s.cfg.Catalog.Lookup(blobName(f.digest).String()); ok {
		if peerErr = s.flyPeers(ctx, f, mp.CID); peerErr == nil {
			return nil
		}
		select {
		case <-f.ready: // chunks may have been streamed already: no second source
			return peerErr
		default:
		}
		s.cfg.Log.Info("registry: peers could not give blob; trying upstream", "digest", f.digest, "err", peerErr)
	}
	u := s.cfg.Upstreams[ns]
	if u == nil {
		if peerErr != nil {
			return peerErr
		}
		if ns == "" {
			return fmt.Errorf("blob %s: no host of the cluster has it: %w", f.digest, chunk.ErrNotFound)
		}
		return fmt.Errorf("blob %s: no host of the cluster has it and registry %q is not configured as an upstream: %w", f.digest, ns, chunk.ErrNotFound)
	}
	if !f.direct {
		if host := s.chosen(f.digest); host != "" {
			return s.flyRelay(ctx, f, host, u, ns, repo)
		}
		if s.cfg.Relay != nil {
			s.m.coord.WithLabelValues(coordChosenHere).Inc()
		}
	}
	return s.flyUpstream(ctx, f, u, repo)
}

// flyUpstream fetches blob f.digest from upstream u.
func (s *Service) flyUpstream(ctx context.Context, f *flight, u *Upstream, repo string) error {
	resp, err := u.get(ctx, http.MethodGet, repo, "blobs", f.digest, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f.setReady(srcUpstream, resp.ContentLength, nil)
	_, err = s.ingest(ctx, io.LimitReader(resp.Body, 1<<40), f.digest, "", resp.ContentLength, f.add)
	if err != nil {
		return fmt.Errorf("blob %s from %s: %w", f.digest, u.base.Host, err)
	}
	return nil
}

// flyPeers fetches blob layer id from peers, streaming as chunks arrive.
func (s *Service) flyPeers(ctx context.Context, f *flight, mcid string) error {
	id, err := cid.Decode(mcid)
	if err != nil {
		return fmt.Errorf("blob %s: catalogue names %q: %w", f.digest, mcid, err)
	}
	m, err := s.cfg.Fetcher.Manifest(ctx, id)
	if err != nil {
		return fmt.Errorf("blob %s: %w", f.digest, err)
	}
	b, err := blobOf(id, m)
	if err != nil {
		return err
	}
	if b.Digest != f.digest {
		return fmt.Errorf("%w: the cluster's layer for blob %s says it keeps %s", errDigest, f.digest, b.Digest)
	}
	mp, _ := s.cfg.Catalog.Lookup(blobName(f.digest).String())
	f.setReady(srcPeer, b.Size, b.Refs)
	if len(b.Refs) > 1 {
		// The first chunk at once, while the fetch sets out (the chunks
		// it already has, the peers' bitmaps): the client's first byte
		// waits for it. A copy the fetch asks for as well is one chunk.
		// (Counted in flying, which this flight holds above zero.)
		s.flying.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, firstChunkWait)
			defer cancel()
			s.cfg.Fetcher.FetchChunk(cctx, id, b.Refs[0].CID) // on failure the fetch brings it
		})
	}
	for {
		_, err = s.cfg.Fetcher.Fetch(fetch.InOrder(ctx), blobName(f.digest), mp, func(api.Event) {})
		if api.CodeOf(err) != api.CodeConflict {
			break
		}
		// Another fetch of this layer (a sync, `p2pimg fetch`) is under
		// way: its chunks stream just the same; look again shortly.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	// Not hashed again here: each stream checks the digest before its last
	// chunk (and marks the blob verified), and a blob is hashed once before
	// it is served from the store otherwise (verifyLocal). Hashing it here
	// took a core for a large blob while the next one started.
	return err
}
