package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	"github.com/ipfs/go-cid"

	"github.com/p2pimg/p2pimg/chunk"
)

// One upstream fetch of a blob for the whole cluster: the live hosts that
// run a mirror rank every blob digest by rendezvous (highest random
// weight) hashing, and the first fetches the blob from upstream. Every
// other host asks it (Relay.Open), which makes it start or join its one
// fetch, and streams the blob from it as its chunks are stored there.
// The chosen host sends the second host that asks to the first (and so
// on), so the blob moves down a chain and no host sends it more than once
// or twice, however many hosts pull it at once. When the chosen host (or
// the host in the chain) is gone, refuses, or stalls, the asker fetches
// from upstream itself: from the start, or from the byte it got to.

// AskMode says what a host asking for a blob lets the asked host do.
type AskMode uint8

const (
	// AskFetch: start or join this host's one fetch of the blob; the
	// asked host may send the asker to the last host that follows that
	// fetch instead (a Redirect).
	AskFetch AskMode = iota
	// AskDirect: as AskFetch, but serve the blob from here (the host the
	// asker was sent to could not).
	AskDirect
	// AskJoin: serve the blob only if it is held or being fetched here;
	// never start a fetch.
	AskJoin
)

// PeerAsk is another host's request for a blob, or for a manifest (Ref
// set, Digest empty).
type PeerAsk struct {
	Digest string  `json:"digest"`
	NS     string  `json:"ns"`   // the upstream registry, as containerd names it
	Repo   string  `json:"repo"` // the repository on that registry
	Mode   AskMode `json:"mode"`
	// Ref is the tag or digest of a manifest asked for, and Accept the
	// media types the asker's client listed.
	Ref    string   `json:"ref,omitempty"`
	Accept []string `json:"accept,omitempty"`
}

// PeerSink is where ServePeer sends a blob to the host that asked.
type PeerSink interface {
	// Size is sent once, before any chunk: the blob's size (-1: unknown).
	Size(n int64) error
	// Chunk sends the blob's next chunk; data hashes to id.
	Chunk(id cid.Cid, data []byte) error
	// Manifest sends a manifest asked for, whole.
	Manifest(mediaType string, data []byte) error
}

// Relay reaches the other mirrors of the cluster (package registry/relay).
type Relay interface {
	// Self is this host's id, as Mirrors names hosts.
	Self() string
	// Mirrors are the other hosts of the cluster that are live and run a
	// registry mirror.
	Mirrors() []string
	// Open asks host for a blob. It returns the blob's size (-1: unknown)
	// and its chunks as they arrive. Errors: a *Redirect; ErrRelayRefused
	// when the host answered that it cannot give the blob;
	// ErrRelayStalled; others when it is unreachable.
	Open(ctx context.Context, host string, ask PeerAsk) (int64, PeerBlob, error)
	// OpenManifest asks host for the manifest ask.Ref names: its bytes
	// (not checked) and media type. Errors as Open's, bar the redirect.
	OpenManifest(ctx context.Context, host string, ask PeerAsk) (data []byte, mediaType string, err error)
}

// PeerBlob is a blob arriving from another host.
type PeerBlob interface {
	// Next is the blob's next chunk, checked against its id; io.EOF only
	// once the host sent the whole blob; ErrRelayStalled when nothing
	// came for a bounded time; ErrRelayRefused when the host said it
	// cannot go on.
	Next() (chunk.Block, error)
	// Close ends the stream (idempotent).
	Close() error
}

// Redirect is an asked host sending the asker to another host that
// follows the same fetch.
type Redirect struct{ To string }

func (r *Redirect) Error() string { return "follow the fetch on host " + r.To }

var (
	// ErrRelayRefused: the asked host cannot give the blob (no upstream
	// of that name, no credentials, upstream failed, not fetching it).
	ErrRelayRefused = errors.New("the host asked for the blob refused")
	// ErrRelayStalled: nothing came from the asked host for too long.
	ErrRelayStalled = errors.New("the host asked for the blob stalled")
	// errNotFetching: asked to join a fetch this host is not making.
	errNotFetching = errors.New("this host is not fetching that blob")
)

// Outcomes of the cluster's one-fetch coordination (a metrics label).
const (
	coordChosenHere = "chosen_here" // this host fetches from upstream for the cluster
	coordFromPeer   = "from_peer"   // streamed from the chosen host (or the chain)
	coordFallback   = "fallback_"   // + unreachable, refused, stalled, cut, digest
	reasonCut       = "cut"         // a stream ended early
	reasonDigest    = "digest"      // what a peer sent did not hash to the blob
	reasonUnreach   = "unreachable" // no stream could be opened
	reasonRefused   = "refused"     // the host said it cannot
	reasonStalled   = "stalled"     // nothing arrived for too long
)

// chosen is the host that fetches blob d from upstream for the cluster,
// or "" when that is this host (or there are no other mirrors, or peers
// sent a blob that did not match d).
func (s *Service) chosen(d string) string {
	if s.cfg.Relay == nil || s.marked(s.distrusted, d) {
		return ""
	}
	self := s.cfg.Relay.Self()
	best, bestW := self, weight(d, self)
	for _, h := range s.cfg.Relay.Mirrors() {
		if w := weight(d, h); bytes.Compare(w[:], bestW[:]) > 0 {
			best, bestW = h, w
		}
	}
	if best == self {
		return ""
	}
	return best
}

// weight is host's rendezvous weight for digest d.
func weight(d, host string) [32]byte {
	return sha256.Sum256([]byte(d + "\x00" + host))
}

// flyRelay fetches blob f.digest through the chosen host, following it
// wherever it sends this host; whatever fails is made up from upstream u.
func (s *Service) flyRelay(ctx context.Context, f *flight, host string, u *Upstream, ns, repo string) error {
	f.mu.Lock()
	f.via = host
	f.mu.Unlock()
	size, rc, via, err := s.openRelay(ctx, f.digest, host, ns, repo)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.fellBack(f.digest, via, 0, err)
		return s.flyUpstream(ctx, f, u, repo)
	}
	s.m.coord.WithLabelValues(coordFromPeer).Inc()
	f.mu.Lock()
	f.via = via
	f.mu.Unlock()
	f.setReady(srcPeer, size, nil)
	defer rc.Close()
	_, err = s.ingestRelay(ctx, f, rc, via, u, repo, size)
	if err != nil && errors.Is(err, errDigest) {
		// A host sent bytes that are not the blob: fetch it from upstream
		// here from now on (the streams of this fetch are cut before their
		// last byte, so clients ask again).
		s.mark(s.distrusted, f.digest)
		s.m.coord.WithLabelValues(coordFallback + reasonDigest).Inc()
		s.cfg.Log.Warn("registry: blob from a peer does not match its digest; fetching it from upstream from now on", "digest", f.digest, "via", via, "err", err)
	}
	if err != nil {
		return fmt.Errorf("blob %s through host %s: %w", f.digest, via, err)
	}
	return nil
}

// ingestRelay stores the chunks of blob f.digest as pb gives them (as
// they are, not chunked again: they were checked against their ids), then
// what is missing from upstream u when pb fails, and publishes the blob
// once it matched its digest.
func (s *Service) ingestRelay(ctx context.Context, f *flight, pb PeerBlob, via string, u *Upstream, repo string, size int64) (*blob, error) {
	sb := s.newBatch(ctx, f.digest, size, f.add)
	small := false // the last chunk was under the minimum size: only the blob's last may be
	for {
		b, err := pb.Next()
		if err == nil && (small || len(b.Data()) > int(s.params.Max)) {
			err = fmt.Errorf("%w: chunks of %d to %d bytes (only the last may be smaller), got %d after %d bytes", ErrRelayRefused, s.params.Min, s.params.Max, len(b.Data()), sb.n)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if err := sb.flush(); err != nil {
				return nil, err
			}
			s.fellBack(f.digest, via, sb.n, err)
			if err := s.restFromUpstream(ctx, u, repo, f.digest, sb.n, size, sb.add); err != nil {
				return nil, err
			}
			break
		}
		small = len(b.Data()) < int(s.params.Min)
		if err := sb.add(b, true); err != nil {
			return nil, err
		}
	}
	return sb.commit("")
}

// restFromUpstream chunks blob d from byte off on, from upstream u, into put.
func (s *Service) restFromUpstream(ctx context.Context, u *Upstream, repo, d string, off, size int64, put func(chunk.Block, bool) error) error {
	body, err := u.blobFrom(ctx, repo, d, off, size)
	if err != nil {
		return err
	}
	defer body.Close()
	return chunk.Split(ctx, io.LimitReader(body, 1<<40), s.params, func(c chunk.Chunk) error { return put(c.Block, false) })
}

// openRelay asks host for blob d, follows a redirect to the host at the
// chain's end, and asks host again to serve it itself when that one
// cannot. via is the host whose stream it returns (or the last one tried).
func (s *Service) openRelay(ctx context.Context, d, host, ns, repo string) (size int64, rc PeerBlob, via string, err error) {
	ask := PeerAsk{Digest: d, NS: ns, Repo: repo, Mode: AskFetch}
	size, rc, err = s.cfg.Relay.Open(ctx, host, ask)
	var red *Redirect
	if !errors.As(err, &red) {
		return size, rc, host, err
	}
	ask.Mode = AskJoin
	if size, rc, err = s.cfg.Relay.Open(ctx, red.To, ask); err == nil {
		return size, rc, red.To, nil
	}
	if ctx.Err() != nil {
		return 0, nil, red.To, ctx.Err()
	}
	s.cfg.Log.Info("registry: the host the chosen one sent us to cannot give the blob; asking the chosen host", "digest", d, "chosen", host, "sent_to", red.To, "err", err)
	ask.Mode = AskDirect
	size, rc, err = s.cfg.Relay.Open(ctx, host, ask)
	if errors.As(err, &red) {
		err = fmt.Errorf("%w: sent to %s again", ErrRelayRefused, red.To)
	}
	return size, rc, host, err
}

// fellBack logs and counts a fetch from upstream that the chosen host (or
// the chain) should have given.
func (s *Service) fellBack(d, via string, at int64, err error) {
	reason := reasonUnreach
	switch {
	case errors.Is(err, ErrRelayStalled):
		reason = reasonStalled
	case errors.Is(err, ErrRelayRefused):
		reason = reasonRefused
	case errors.Is(err, chunk.ErrHashMismatch):
		reason = reasonDigest
	case at > 0:
		reason = reasonCut
	}
	s.m.coord.WithLabelValues(coordFallback + reason).Inc()
	s.cfg.Log.Warn("registry: fetching the blob from upstream here: the host fetching it for the cluster did not give it",
		"digest", d, "host", via, "from_byte", at, "reason", reason, "err", err)
}

// ServePeer sends blob ask.Digest to host from, which asked for it: from
// the store when it is held here, else from this host's one fetch of it
// (started when ask allows), chunk by chunk as they are stored. It
// answers a host to send from to instead when the fetch is followed by
// another host already and ask allows that. It returns once the whole
// blob went out and matched its digest here; an error otherwise (wrapping
// ErrRelayRefused when nothing was sent because this host cannot).
func (s *Service) ServePeer(ctx context.Context, ask PeerAsk, from string, sink PeerSink) (redirect string, err error) {
	if len(ask.Repo) > 255 || !repoRE.MatchString(ask.Repo) {
		// It goes into the upstream URL and token scope, with this host's
		// credentials: a member must not shape those.
		return "", fmt.Errorf("%w: repository %q", ErrRelayRefused, ask.Repo)
	}
	if ask.Ref != "" {
		return "", s.servePeerManifest(ctx, ask, sink)
	}
	d := ask.Digest
	if _, err := parseDigest(d); err != nil {
		return "", fmt.Errorf("%w: %w", ErrRelayRefused, err)
	}
	if b, ok := s.local(ctx, d); ok {
		return "", s.sendStored(ctx, b, sink)
	}
	f, redirect, err := s.peerFlight(ask, from)
	if err != nil || redirect != "" {
		return redirect, err
	}
	select {
	case <-f.ready:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	f.mu.Lock()
	src, size := f.src, f.size
	f.mu.Unlock()
	if src == "" {
		<-f.done
		return "", fmt.Errorf("%w: %w", ErrRelayRefused, f.failed())
	}
	if err := sink.Size(size); err != nil {
		return "", err
	}
	buf := make([]byte, 0, 256<<10)
	for i := 0; ; i++ {
		ref, ok, err := s.next(ctx, f, i)
		if err != nil {
			return "", err
		}
		if !ok {
			break
		}
		data, err := s.chunkData(ctx, ref.CID, buf)
		if err != nil {
			return "", err
		}
		buf = data[:0]
		if err := sink.Chunk(ref.CID, data); err != nil {
			return "", err
		}
	}
	select {
	case <-f.done:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	return "", f.failed()
}

// peerFlight is the fetch of ask.Digest that a host's request follows,
// started when none is under way and ask allows; or the host to send the
// asker to: the last one that follows the fetch already.
func (s *Service) peerFlight(ask PeerAsk, from string) (*flight, string, error) {
	base := s.base()
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.flights[ask.Digest]
	if f == nil {
		if ask.Mode == AskJoin {
			return nil, "", fmt.Errorf("%w: blob %s: %w", ErrRelayRefused, ask.Digest, errNotFetching)
		}
		f = s.startLocked(base, ask.Digest, ask.NS, ask.Repo, true)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.via == from {
		return nil, "", fmt.Errorf("%w: blob %s: this host streams it from %s already (it chose this host, this host chose it)", ErrRelayRefused, ask.Digest, from)
	}
	if ask.Mode == AskJoin {
		return f, "", nil
	}
	if f.tail != "" && f.tail != from && ask.Mode == AskFetch {
		to := f.tail
		f.tail = from
		return nil, to, nil
	}
	f.tail = from
	return f, "", nil
}

// sendStored sends a blob held here, checked first.
func (s *Service) sendStored(ctx context.Context, b *blob, sink PeerSink) error {
	if err := s.verifyLocal(ctx, b); err != nil {
		return fmt.Errorf("%w: %w", ErrRelayRefused, err)
	}
	if err := sink.Size(b.Size); err != nil {
		return err
	}
	buf := make([]byte, 0, 256<<10)
	for _, r := range b.Refs {
		data, err := s.cfg.Store.GetInto(ctx, r.CID, buf)
		if err != nil {
			return fmt.Errorf("blob %s: %w", b.Digest, err)
		}
		buf = data[:0]
		if err := sink.Chunk(r.CID, data); err != nil {
			return err
		}
	}
	return nil
}
