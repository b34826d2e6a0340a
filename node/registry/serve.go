package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/p2pimg/p2pimg/chunk"
)

var (
	// The distribution spec's repository name and tag grammars.
	repoRE = regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$`)
	tagRE  = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
)

// manifestTypes are what a mirror asks upstream for when its client named none.
var manifestTypes = []string{
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.docker.distribution.manifest.v2+json",
}

// regError is an OCI error response.
type regError struct {
	status int
	code   string
	err    error
}

func (e *regError) Error() string { return e.err.Error() }

func newErr(status int, code string, format string, a ...any) *regError {
	return &regError{status, code, fmt.Errorf(format, a...)}
}

// Handler is the registry API; flights it starts run until ctx ends.
func (s *Service) Handler(ctx context.Context) http.Handler {
	s.mu.Lock()
	s.baseCtx = ctx
	s.mu.Unlock()
	return http.HandlerFunc(s.serve)
}

func (s *Service) base() context.Context {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.baseCtx == nil {
		return context.Background()
	}
	return s.baseCtx
}

func (s *Service) serve(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	ns := r.URL.Query().Get("ns")
	label := ns
	if label == "" {
		label = "cluster"
	}
	kind, src, err := s.route(w, r, ns)
	result := "ok"
	if err != nil {
		var re *regError
		if !errors.As(err, &re) {
			re = &regError{http.StatusInternalServerError, "UNKNOWN", err}
			s.cfg.Log.Warn("registry: request failed", "path", r.URL.Path, "ns", ns, "err", err)
		}
		result = strings.ToLower(re.code)
		writeErr(w, r, re)
	}
	s.m.requests.WithLabelValues(label, kind, src, result).Inc()
	if kind == "manifest" {
		s.m.resolve.Observe(time.Since(start).Seconds())
	}
}

func writeErr(w http.ResponseWriter, r *http.Request, re *regError) {
	body, _ := json.Marshal(map[string]any{"errors": []map[string]any{{"code": re.code, "message": re.err.Error()}}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(re.status)
	if r.Method != http.MethodHead {
		w.Write(body)
	}
}

// route dispatches a request; it answers the metrics' kind and source.
func (s *Service) route(w http.ResponseWriter, r *http.Request, ns string) (kind, src string, err error) {
	p := r.URL.Path
	if p == "/v2/" || p == "/v2" {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			return "base", srcNone, newErr(http.StatusMethodNotAllowed, "UNSUPPORTED", "%s /v2/: this mirror serves pulls only (GET, HEAD)", r.Method)
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "2")
		if r.Method == http.MethodGet {
			w.Write([]byte("{}"))
		}
		return "base", srcLocal, nil
	}
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return "other", srcNone, newErr(http.StatusNotFound, "NAME_UNKNOWN", "%s: not a registry API path (/v2/...)", p)
	}
	var repo, ref string
	if r, ok := strings.CutSuffix(rest, "/tags/list"); ok {
		kind, repo = "tags", r
	} else if i := strings.LastIndex(rest, "/manifests/"); i >= 0 {
		kind, repo, ref = "manifest", rest[:i], rest[i+len("/manifests/"):]
	} else if i := strings.LastIndex(rest, "/blobs/"); i >= 0 {
		kind, repo, ref = "blob", rest[:i], rest[i+len("/blobs/"):]
	} else {
		return "other", srcNone, newErr(http.StatusNotFound, "UNSUPPORTED", "%s: this mirror serves /v2/NAME/manifests/REF, /v2/NAME/blobs/DIGEST and /v2/NAME/tags/list only", p)
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return kind, srcNone, newErr(http.StatusMethodNotAllowed, "UNSUPPORTED", "%s %s: this mirror serves pulls only (GET, HEAD); push to the upstream registry", r.Method, p)
	}
	if first, rest, ok := strings.Cut(repo, "/"); ok && ns == "" && s.cfg.Upstreams[first] != nil {
		ns, repo = first, rest // HOST:PORT/docker.io/library/alpine: a registry path prefix, for clients that send no ns
	}
	if len(repo) > 255 || !repoRE.MatchString(repo) {
		return kind, srcNone, newErr(http.StatusBadRequest, "NAME_INVALID", "repository name %q: want lower-case path components such as library/alpine", repo)
	}
	switch kind {
	case "tags":
		src, err = s.serveTags(w, r, ns, repo)
	case "blob":
		src, err = s.serveBlob(w, r, ns, repo, ref)
	default:
		src, err = s.serveManifest(w, r, ns, repo, ref)
	}
	return kind, src, err
}

func (s *Service) serveBlob(w http.ResponseWriter, r *http.Request, ns, repo, d string) (string, error) {
	start := time.Now()
	ctx := r.Context()
	if _, err := parseDigest(d); err != nil {
		return srcNone, &regError{http.StatusBadRequest, "DIGEST_INVALID", err}
	}
	if b, ok := s.local(ctx, d); ok {
		if err := s.verifyLocal(ctx, b); err != nil {
			s.cfg.Log.Error("registry: stored blob does not match its digest; not served", "digest", d, "err", err)
			return srcLocal, newErr(http.StatusNotFound, "BLOB_UNKNOWN", "blob %s: the copy on this host is damaged (run `p2pimg verify`)", d)
		}
		return srcLocal, s.serveStored(w, r, b, srcLocal, start)
	}
	if ns == "" {
		ns = s.cfg.Upstreams.defaultNS()
	}
	f := s.flightFor(d, ns, repo)
	select {
	case <-f.ready:
	case <-ctx.Done():
		return srcNone, ctx.Err()
	}
	f.mu.Lock()
	src, size := f.src, f.size
	f.mu.Unlock()
	if src == "" { // failed before any source had it
		<-f.done
		return srcNone, upstreamErr("BLOB_UNKNOWN", f.failed())
	}
	if r.Method == http.MethodHead && size >= 0 {
		blobHeaders(w, d, size)
		w.WriteHeader(http.StatusOK)
		return src, nil
	}
	if r.Method == http.MethodHead || r.Header.Get("Range") != "" {
		select { // parts and unknown sizes wait for the whole blob, checked
		case <-f.done:
		case <-ctx.Done():
			return src, ctx.Err()
		}
		if err := f.failed(); err != nil {
			return src, upstreamErr("BLOB_UNKNOWN", err)
		}
		b, ok := s.local(ctx, d)
		if !ok {
			return src, newErr(http.StatusNotFound, "BLOB_UNKNOWN", "blob %s: fetched but gone again (gc?)", d)
		}
		if err := s.verifyLocal(ctx, b); err != nil {
			return src, &regError{http.StatusBadGateway, "UNKNOWN", err}
		}
		return src, s.serveStored(w, r, b, src, start)
	}
	return src, s.stream(w, r, f, src, size, start)
}

func blobHeaders(w http.ResponseWriter, d string, size int64) {
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", d)
	h.Set("Accept-Ranges", "bytes")
	if size >= 0 {
		h.Set("Content-Length", strconv.FormatInt(size, 10))
	}
}

// parseRange reads a single "bytes=" range of a size-byte blob; ok is
// false when r names none (or several, which are answered whole).
func parseRange(hdr string, size int64) (start, end int64, ok bool, err error) {
	spec, found := strings.CutPrefix(hdr, "bytes=")
	if hdr == "" || !found || strings.Contains(spec, ",") {
		return 0, 0, false, nil
	}
	a, b, found := strings.Cut(strings.TrimSpace(spec), "-")
	if !found {
		return 0, 0, false, fmt.Errorf("range %q: want bytes=START-[END] or bytes=-SUFFIX", hdr)
	}
	switch {
	case a == "":
		n, perr := strconv.ParseInt(b, 10, 64)
		if perr != nil || n <= 0 {
			return 0, 0, false, fmt.Errorf("range %q: bad suffix length", hdr)
		}
		start, end = max(size-n, 0), size-1
	default:
		s, perr := strconv.ParseInt(a, 10, 64)
		if perr != nil || s < 0 {
			return 0, 0, false, fmt.Errorf("range %q: bad start", hdr)
		}
		start, end = s, size-1
		if b != "" {
			e, perr := strconv.ParseInt(b, 10, 64)
			if perr != nil || e < s {
				return 0, 0, false, fmt.Errorf("range %q: bad end", hdr)
			}
			end = min(e, size-1)
		}
	}
	if start >= size {
		return 0, 0, false, fmt.Errorf("range %q: starts past the blob's %d bytes", hdr, size)
	}
	return start, end, true, nil
}

// serveStored answers from a blob held whole here (and checked).
func (s *Service) serveStored(w http.ResponseWriter, r *http.Request, b *blob, src string, start time.Time) error {
	from, to, partial, err := parseRange(r.Header.Get("Range"), b.Size)
	if err != nil {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", b.Size))
		return &regError{http.StatusRequestedRangeNotSatisfiable, "BLOB_UNKNOWN", err}
	}
	if !partial {
		from, to = 0, b.Size-1
	}
	blobHeaders(w, b.Digest, to-from+1)
	status := http.StatusOK
	if partial {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, to, b.Size))
		status = http.StatusPartialContent
	}
	w.WriteHeader(status)
	if r.Method == http.MethodHead || b.Size == 0 {
		return nil
	}
	buf := make([]byte, 0, chunk.MaxChunkSize)
	var off int64
	first := true
	for _, ref := range b.Refs {
		lo, hi := off, off+int64(ref.Size)
		off = hi
		if hi <= from || lo > to {
			continue
		}
		data, err := s.cfg.Store.GetInto(r.Context(), ref.CID, buf)
		if err != nil {
			panic(http.ErrAbortHandler) // headers are out: cut the body short
		}
		data = data[max(from-lo, 0):min(to+1-lo, int64(len(data)))]
		if _, err := w.Write(data); err != nil {
			return nil // the client went away
		}
		if first {
			first = false
			s.m.firstByte.WithLabelValues(src).Observe(time.Since(start).Seconds())
		}
		s.m.bytes.WithLabelValues(src).Add(float64(len(data)))
	}
	return nil
}

// stream sends a blob in flight as its chunks are stored, in order,
// hashing it; the last chunk goes out only once the whole blob matched its
// digest, so a client never completes a blob that does not. (From
// upstream the last chunk is known only at the end, so there each chunk
// waits for the next, and the stream ends when the fetch, which hashed
// the blob as it stored it, says it matched.)
func (s *Service) stream(w http.ResponseWriter, r *http.Request, f *flight, src string, size int64, start time.Time) error {
	ctx := r.Context()
	blobHeaders(w, f.digest, size)
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	rc.Flush() // the client knows the blob is coming while its first chunks are fetched
	f.mu.Lock()
	ingested := !f.known // hashed by the fetch itself, which fails unless the blob matched: not hashed again here
	f.mu.Unlock()
	h := sha256.New()
	bufs := [2][]byte{make([]byte, 0, 256<<10), make([]byte, 0, 256<<10)}
	var held []byte
	var n, sent int64
	for i := 0; ; i++ {
		ref, ok, err := s.next(ctx, f, i)
		if err != nil {
			s.cfg.Log.Info("registry: blob stream cut", "digest", f.digest, "err", err)
			panic(http.ErrAbortHandler)
		}
		if !ok {
			break
		}
		data, err := s.chunkData(ctx, ref.CID, bufs[i%2])
		if err != nil {
			panic(http.ErrAbortHandler)
		}
		bufs[i%2] = data[:0]
		if !ingested {
			h.Write(data)
		}
		n += int64(len(data))
		if held != nil {
			if !s.send(w, rc, held, src, start, &sent) {
				return nil
			}
			held = nil
		}
		f.mu.Lock()
		last := !f.known || i == len(f.refs)-1 // upstream: any chunk may be the last
		f.mu.Unlock()
		if !last {
			if !s.send(w, rc, data, src, start, &sent) {
				return nil
			}
			continue
		}
		held = data
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); !ingested && (got != f.digest || (size >= 0 && n != size)) {
		s.cfg.Log.Error("registry: blob does not match its digest; stream cut before its end", "digest", f.digest, "got", got, "bytes", n)
		panic(http.ErrAbortHandler)
	}
	s.mark(s.verified, f.digest)
	if held != nil {
		s.send(w, rc, held, src, start, &sent)
	}
	return nil
}

// chunkData is a chunk of a blob in flight: from the fetch that is
// storing it (verified), else from the store.
func (s *Service) chunkData(ctx context.Context, id cid.Cid, buf []byte) ([]byte, error) {
	if data, ok := s.arrivals.read(id, buf); ok {
		return data, nil
	}
	return s.cfg.Store.GetInto(ctx, id, buf)
}

// send writes one chunk of a stream, counting it in sent; false when the
// client went away.
func (s *Service) send(w http.ResponseWriter, rc *http.ResponseController, data []byte, src string, start time.Time, sent *int64) bool {
	if _, err := w.Write(data); err != nil {
		return false
	}
	rc.Flush()
	*sent += int64(len(data))
	if *sent == int64(len(data)) {
		s.m.firstByte.WithLabelValues(src).Observe(time.Since(start).Seconds())
	}
	s.m.bytes.WithLabelValues(src).Add(float64(len(data)))
	return true
}
