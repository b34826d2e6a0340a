package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/p2pimg/p2pimg/node/gossip"
)

// accepted is the media types a request's Accept headers list.
func accepted(r *http.Request) []string {
	var out []string
	for _, v := range r.Header.Values("Accept") {
		for _, t := range strings.Split(v, ",") {
			t, _, _ = strings.Cut(t, ";")
			if t = strings.TrimSpace(t); t != "" {
				out = append(out, t)
			}
		}
	}
	return out
}

// mediaTypeOf is the mediaType field of a manifest's JSON.
func mediaTypeOf(data []byte) string {
	var m struct {
		MediaType string `json:"mediaType"`
	}
	json.Unmarshal(data, &m)
	return m.MediaType
}

func (s *Service) serveManifest(w http.ResponseWriter, r *http.Request, ns, repo, ref string) (string, error) {
	ctx := r.Context()
	accept := accepted(r)
	data, mt, src, err := s.manifest(ctx, ns, repo, ref, accept, true)
	if err != nil {
		return src, err
	}
	if mt == "" {
		mt = mediaTypeOf(data)
	}
	// A mirror serves the bytes it holds, which it cannot convert: a type
	// the client did not list is still answered, under its own
	// Content-Type (as registries do), rather than as a miss. The Accept
	// list chose the variant when the manifest came from upstream.
	h := w.Header()
	h.Set("Content-Type", mt)
	h.Set("Docker-Content-Digest", digestOf(data))
	h.Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		w.Write(data)
		s.m.bytes.WithLabelValues(src).Add(float64(len(data)))
	}
	return src, nil
}

// manifest resolves ref (a tag or a digest) to a manifest's exact bytes,
// checked against its digest. What no host holds is asked of the host the
// cluster chose for ref when viaPeers (so upstream is asked once for the
// cluster), else of upstream.
func (s *Service) manifest(ctx context.Context, ns, repo, ref string, accept []string, viaPeers bool) ([]byte, string, string, error) {
	if strings.Contains(ref, ":") {
		if _, err := parseDigest(ref); err != nil {
			return nil, "", srcNone, &regError{http.StatusBadRequest, "DIGEST_INVALID", err}
		}
		return s.manifestByDigest(ctx, ns, repo, ref, accept, viaPeers)
	}
	if !tagRE.MatchString(ref) {
		return nil, "", srcNone, newErr(http.StatusBadRequest, "MANIFEST_INVALID", "tag %q: letters, digits, '_', '.', '-', at most 128, not starting with '.' or '-'", ref)
	}
	name, nameErr := refName(ns, repo, ref)
	mp, inCluster := gossip.Mapping{}, false
	if nameErr == nil {
		mp, inCluster = s.cfg.Catalog.Lookup(name.String())
	}
	u := s.cfg.Upstreams[ns]
	if inCluster && (u == nil || s.fresh(mp.Published)) {
		return s.manifestOfMapping(ctx, ns, repo, mp, accept, viaPeers)
	}
	if def := s.cfg.Upstreams.defaultNS(); ns == "" && def != "" {
		return s.manifest(ctx, def, repo, ref, accept, viaPeers)
	}
	if u == nil {
		where := "the cluster holds no image"
		if ns != "" {
			where += fmt.Sprintf(" and %q is not a configured upstream registry", ns)
		}
		return nil, "", srcNone, newErr(http.StatusNotFound, "MANIFEST_UNKNOWN", "%s:%s: %s by that reference", repo, ref, where)
	}
	data, mt, src, err := s.fetchManifest(ctx, u, ns, repo, ref, "", accept, viaPeers)
	if err == nil {
		if nameErr != nil {
			s.cfg.Log.Warn("registry: tag not kept for the cluster", "err", nameErr)
		} else if b, ok := s.local(ctx, digestOf(data)); ok {
			if err := s.tag(ctx, ns, repo, ref, b); err != nil {
				s.cfg.Log.Warn("registry: tag not kept for the cluster", "err", err)
			}
		}
		return data, mt, src, nil
	}
	if inCluster && !errors.Is(err, errUpstreamMissing) && !errors.Is(err, errDigest) {
		s.cfg.Log.Info("registry: upstream unreachable; the cluster's tag is used", "repo", repo, "tag", ref, "err", err)
		return s.manifestOfMapping(ctx, ns, repo, mp, accept, viaPeers)
	}
	return nil, "", srcUpstream, upstreamErr("MANIFEST_UNKNOWN", err)
}

// upstreamErr is the answer when no source had the content: a miss (404,
// what the distribution spec asks for and what moves containerd on to its
// next host) even when the upstream could not be reached, its error in the
// message; 502 only when a source sent bytes that do not match their digest.
func upstreamErr(code string, err error) error {
	if errors.Is(err, errDigest) {
		return &regError{http.StatusBadGateway, "UNKNOWN", err}
	}
	return &regError{http.StatusNotFound, code, err}
}

// fresh says whether a mapping published at t (unix ns) is within the tag TTL.
func (s *Service) fresh(t int64) bool { return time.Since(time.Unix(0, t)) < s.cfg.TagTTL }

// manifestOfMapping is the manifest a tag layer of the cluster points at.
func (s *Service) manifestOfMapping(ctx context.Context, ns, repo string, mp gossip.Mapping, accept []string, viaPeers bool) ([]byte, string, string, error) {
	id, err := cid.Decode(mp.CID)
	if err != nil {
		return nil, "", srcNone, fmt.Errorf("tag %s: catalogue names %q: %w", mp.Name, mp.CID, err)
	}
	m, err := s.cfg.Fetcher.Manifest(ctx, id)
	if err != nil {
		return nil, "", srcPeer, upstreamErr("MANIFEST_UNKNOWN", fmt.Errorf("tag %s: %w", mp.Name, err))
	}
	b, err := blobOf(id, m)
	if err != nil {
		return nil, "", srcNone, err
	}
	return s.manifestByDigest(ctx, ns, repo, b.Digest, accept, viaPeers)
}

// manifestByDigest is manifest d from this host, else peers, else upstream.
func (s *Service) manifestByDigest(ctx context.Context, ns, repo, d string, accept []string, viaPeers bool) ([]byte, string, string, error) {
	src := srcLocal
	b, ok := s.local(ctx, d)
	if !ok {
		if _, inCluster := s.cfg.Catalog.Lookup(blobName(d).String()); inCluster {
			f := s.flightFor(d, "", repo)
			select {
			case <-f.done:
			case <-ctx.Done():
				return nil, "", srcPeer, ctx.Err()
			}
			b, ok = s.local(ctx, d)
			src = srcPeer
		}
	}
	if ok {
		data, err := s.readAll(ctx, b)
		if err != nil {
			return nil, "", src, err
		}
		return data, b.MediaType, src, nil
	}
	if ns == "" {
		ns = s.cfg.Upstreams.defaultNS()
	}
	u := s.cfg.Upstreams[ns]
	if u == nil {
		return nil, "", srcNone, newErr(http.StatusNotFound, "MANIFEST_UNKNOWN", "manifest %s@%s: no host of the cluster has it", repo, d)
	}
	data, mt, src, err := s.fetchManifest(ctx, u, ns, repo, d, d, accept, viaPeers)
	if err != nil {
		return nil, "", src, upstreamErr("MANIFEST_UNKNOWN", err)
	}
	return data, mt, src, nil
}

// upstreamManifest gets a manifest from upstream, checks it against want
// (when a digest) and the digest upstream claims, and keeps it. Requests
// for the same manifest at once share one upstream request.
func (s *Service) upstreamManifest(ctx context.Context, u *Upstream, ns, repo, ref, want string, accept []string) ([]byte, string, error) {
	if len(accept) == 0 {
		accept = manifestTypes
	}
	type answer struct {
		data []byte
		mt   string
	}
	key := strings.Join(append([]string{u.base.Host, repo, ref, want}, accept...), "\x00")
	v, err, _ := s.manifestFetches.Do(key, func() (any, error) {
		data, mt, err := s.upstreamManifestOnce(ctx, u, ns, repo, ref, want, accept)
		return answer{data, mt}, err
	})
	a, _ := v.(answer)
	return a.data, a.mt, err
}

func (s *Service) upstreamManifestOnce(ctx context.Context, u *Upstream, ns, repo, ref, want string, accept []string) ([]byte, string, error) {
	resp, err := u.get(ctx, http.MethodGet, repo, "manifests", ref, http.Header{"Accept": accept})
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxManifest+1))
	if err != nil {
		return nil, "", fmt.Errorf("upstream %s: manifest %s:%s: %w", u.base.Host, repo, ref, err)
	}
	if len(data) > maxManifest {
		return nil, "", fmt.Errorf("upstream %s: manifest %s:%s is over %d bytes", u.base.Host, repo, ref, maxManifest)
	}
	d := digestOf(data)
	if claimed := resp.Header.Get("Docker-Content-Digest"); (want != "" && d != want) || (claimed != "" && claimed != d) {
		return nil, "", fmt.Errorf("%w: upstream %s: manifest %s:%s hashes to %s (asked %q, claimed %q)", errDigest, u.base.Host, repo, ref, d, want, claimed)
	}
	mt, _, _ := strings.Cut(resp.Header.Get("Content-Type"), ";")
	if mt = strings.TrimSpace(mt); mt == "" || mt == "application/json" || mt == "text/plain" {
		if inner := mediaTypeOf(data); inner != "" {
			mt = inner
		}
	}
	b, err := s.ingest(ctx, bytes.NewReader(data), d, mt, int64(len(data)), nil)
	if err != nil {
		return nil, "", err
	}
	if !strings.Contains(ref, ":") {
		// A tag is kept for the cluster before the requests that shared
		// this one are answered: one that comes just after then finds it
		// here rather than asking upstream again (the chosen host, asked
		// by the others a moment after its own client).
		if err := s.tag(ctx, ns, repo, ref, b); err != nil {
			s.cfg.Log.Warn("registry: tag not kept for the cluster", "err", err)
		}
	}
	return data, mt, nil
}

// fetchManifest gets manifest ref (checked against want, a digest, when
// set) from the host the cluster chose for it when viaPeers and there is
// one, else (or when that host cannot) from upstream u, and keeps it. It
// answers the source.
func (s *Service) fetchManifest(ctx context.Context, u *Upstream, ns, repo, ref, want string, accept []string, viaPeers bool) ([]byte, string, string, error) {
	if viaPeers {
		if host := s.chosen(manifestKey(ns, repo, ref)); host != "" {
			check := want
			if check == "" {
				// A tag: which manifest it names is upstream's word, not
				// the chosen host's. Upstream is asked with a HEAD (no
				// body; registries that meter pulls count GETs); when it
				// cannot say, the host's answer stands, as a member's.
				d, err := s.upstreamDigest(ctx, u, repo, ref, accept)
				switch {
				case errors.Is(err, errUpstreamMissing):
					return nil, "", srcUpstream, err
				case err != nil:
					s.cfg.Log.Info("registry: upstream did not say which manifest a tag names; taking the chosen host's answer", "repo", repo, "ref", ref, "err", err)
				default:
					if b, ok := s.local(ctx, d); ok {
						data, err := s.readAll(ctx, b)
						if err == nil {
							return data, b.MediaType, srcLocal, nil
						}
					}
					check = d
				}
			}
			data, mt, err := s.peerManifest(ctx, host, ns, repo, ref, check, accept)
			if err == nil {
				return data, mt, srcPeer, nil
			}
			if ctx.Err() != nil {
				return nil, "", srcPeer, ctx.Err()
			}
			s.cfg.Log.Info("registry: the host chosen for a manifest did not give it; asking upstream", "repo", repo, "ref", ref, "host", host, "err", err)
		}
	}
	data, mt, err := s.upstreamManifest(ctx, u, ns, repo, ref, want, accept)
	return data, mt, srcUpstream, err
}

// upstreamDigest is the digest of the manifest upstream u answers for ref
// with these media types, from a HEAD request.
func (s *Service) upstreamDigest(ctx context.Context, u *Upstream, repo, ref string, accept []string) (string, error) {
	if len(accept) == 0 {
		accept = manifestTypes
	}
	resp, err := u.get(ctx, http.MethodHead, repo, "manifests", ref, http.Header{"Accept": accept})
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	d := resp.Header.Get("Docker-Content-Digest")
	if _, err := parseDigest(d); err != nil {
		return "", fmt.Errorf("upstream %s: manifest %s:%s: no digest in its answer to HEAD (%q)", u.base.Host, repo, ref, d)
	}
	return d, nil
}

// manifestKey is what the cluster ranks hosts by to choose the one that
// asks upstream for manifest ref: a digest, or the tag with its repository.
func manifestKey(ns, repo, ref string) string {
	if strings.Contains(ref, ":") {
		return ref
	}
	return ns + "/" + repo + ":" + ref
}

// peerManifest asks host for manifest ref, checks it against want (when
// set) and keeps it. A tag's answer is trusted as the cluster's tags are:
// the host is a member of the cluster.
func (s *Service) peerManifest(ctx context.Context, host, ns, repo, ref, want string, accept []string) ([]byte, string, error) {
	data, mt, err := s.cfg.Relay.OpenManifest(ctx, host, PeerAsk{NS: ns, Repo: repo, Ref: ref, Accept: accept})
	if err != nil {
		return nil, "", err
	}
	d := digestOf(data)
	if want != "" && d != want {
		return nil, "", fmt.Errorf("%w: host %s: manifest %s hashes to %s", errDigest, host, want, d)
	}
	if mt == "" {
		mt = mediaTypeOf(data)
	}
	if _, err := s.ingest(ctx, bytes.NewReader(data), d, mt, int64(len(data)), nil); err != nil {
		return nil, "", err
	}
	return data, mt, nil
}

// servePeerManifest sends another host the manifest it asked for, from
// here or upstream (never from a third host: two hosts that each think
// the other chosen must not ask each other in a circle).
func (s *Service) servePeerManifest(ctx context.Context, ask PeerAsk, sink PeerSink) error {
	if len(ask.Repo) > 255 || !repoRE.MatchString(ask.Repo) {
		return fmt.Errorf("%w: repository %q", ErrRelayRefused, ask.Repo)
	}
	if len(ask.Accept) > 32 {
		return fmt.Errorf("%w: %d media types accepted, at most 32", ErrRelayRefused, len(ask.Accept))
	}
	data, mt, _, err := s.manifest(ctx, ask.NS, ask.Repo, ask.Ref, ask.Accept, false)
	if err != nil {
		return fmt.Errorf("%w: manifest %s:%s: %w", ErrRelayRefused, ask.Repo, ask.Ref, err)
	}
	return sink.Manifest(mt, data)
}
