package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"strings"

	"github.com/ipfs/go-cid"

	"github.com/p2pimg/p2pimg/chunk"
)

// Meta keys of a blob layer's manifest.
const (
	metaDigest    = "oci.digest"
	metaMediaType = "oci.mediaType"
	blobPath      = "blob"
	blobRepo      = "oci/blob"
	refRepo       = "oci/ref/"
)

// maxManifest bounds an image manifest or index (the distribution spec's
// suggested limit).
const maxManifest = 4 << 20

// errDigest: bytes that do not hash to the digest they were asked for.
var errDigest = errors.New("content does not match its digest")

// parseDigest checks a "sha256:HEX" digest; it returns the hex part.
func parseDigest(d string) (string, error) {
	alg, hx, ok := strings.Cut(d, ":")
	if !ok || alg != "sha256" {
		return "", fmt.Errorf("digest %q: only sha256 digests are supported (sha256:64 hex digits)", d)
	}
	if len(hx) != 64 || strings.ToLower(hx) != hx {
		return "", fmt.Errorf("digest %q: want sha256: followed by 64 lower-case hex digits", d)
	}
	if _, err := hex.DecodeString(hx); err != nil {
		return "", fmt.Errorf("digest %q: %v", d, err)
	}
	return hx, nil
}

// digestOf is the sha256 digest of b.
func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// blobName is the layer that keeps the blob with digest d.
func blobName(d string) chunk.Name {
	return chunk.Name{Repo: blobRepo, Tag: strings.Replace(d, ":", "-", 1)}
}

// refName is the layer that maps a repository's tag to its manifest: repo
// is the reference the image was imported or pulled with (for a pull, the
// upstream registry first, its ':' as '_', which host names never hold).
func refName(ns, repo, tag string) (chunk.Name, error) {
	n, err := chunk.ParseName(refRepoPath(ns, repo) + ":" + tag)
	if err != nil {
		return chunk.Name{}, fmt.Errorf("reference %s:%s cannot be kept as a p2pimg layer name: %w", repo, tag, err)
	}
	return n, nil
}

// refRepoPath is the layer repository under which refName keeps the tags
// of repo from registry ns.
func refRepoPath(ns, repo string) string {
	if ns != "" {
		repo = strings.ReplaceAll(ns, ":", "_") + "/" + repo
	}
	return refRepo + repo
}

// blob is a blob or manifest kept in the store: its chunks in order.
type blob struct {
	Digest    string
	MediaType string // manifests only
	Size      int64
	Refs      []chunk.Ref
	ID        cid.Cid // the blob layer's manifest
}

// blobOf reads a blob layer's manifest.
func blobOf(id cid.Cid, m *chunk.Manifest) (*blob, error) {
	d := m.Meta[metaDigest]
	if _, err := parseDigest(d); err != nil || len(m.Entries) != 1 || m.Entries[0].Path != blobPath || m.Entries[0].Type != chunk.File {
		return nil, fmt.Errorf("layer %s is not a registry blob (one file %q and a %s)", id, blobPath, metaDigest)
	}
	e := m.Entries[0]
	return &blob{Digest: d, MediaType: m.Meta[metaMediaType], Size: e.Size, Refs: e.Chunks, ID: id}, nil
}

// blobManifest is the one-file layer that keeps b.
func blobManifest(p chunk.Params, digest, mediaType string, size int64, refs []chunk.Ref) (*chunk.Manifest, error) {
	meta := map[string]string{metaDigest: digest}
	if mediaType != "" {
		meta[metaMediaType] = mediaType
	}
	if len(mediaType) > 4096 {
		return nil, fmt.Errorf("media type of %s: %d bytes, at most 4096", digest, len(mediaType))
	}
	return &chunk.Manifest{Params: p, Meta: meta, Entries: []chunk.Entry{{
		Path: blobPath, Type: chunk.File, Mode: fs.FileMode(0o644), Size: size, Chunks: refs,
	}}}, nil
}

// ingest chunks r into the store, checks it against digest (and size,
// when known: >= 0) and publishes it as a blob layer. Nothing is
// published when r fails or its bytes do not match; chunks already stored
// are then left for gc. onChunk sees each chunk once it is stored.
func (s *Service) ingest(ctx context.Context, r io.Reader, digest, mediaType string, size int64, onChunk func(chunk.Ref)) (*blob, error) {
	sb := s.newBatch(ctx, digest, size, onChunk)
	if err := chunk.Split(ctx, r, s.params, func(c chunk.Chunk) error { return sb.add(c.Block, false) }); err != nil {
		return nil, err
	}
	return sb.commit(mediaType)
}

// batchChunks is how many chunks of a blob are stored in one write.
const batchChunks = 16

// storeBatch stores a blob's chunks in order, a few per store write
// rather than one, hashing them; each is announced (onChunk) once stored.
type storeBatch struct {
	s       *Service
	ctx     context.Context
	digest  string
	size    int64
	onChunk func(chunk.Ref)
	h       hash.Hash
	n       int64
	refs    []chunk.Ref
	pending []chunk.Block
	arena   []byte // copies of chunks whose buffers are reused
}

func (s *Service) newBatch(ctx context.Context, digest string, size int64, onChunk func(chunk.Ref)) *storeBatch {
	return &storeBatch{s: s, ctx: ctx, digest: digest, size: size, onChunk: onChunk, h: sha256.New()}
}

// add takes the blob's next chunk; owned says b's data stays valid (else
// it is copied).
func (sb *storeBatch) add(b chunk.Block, owned bool) error {
	switch next := sb.n + int64(len(b.Data())); {
	case sb.size >= 0 && next > sb.size:
		// Not the blob announced: its source is not trusted for it again.
		return fmt.Errorf("%w: %s: more than the %d bytes announced", errDigest, sb.digest, sb.size)
	case next > MaxBlob:
		return fmt.Errorf("%w: %s: more than %d bytes, the most a blob may have", errDigest, sb.digest, int64(MaxBlob))
	}
	sb.h.Write(b.Data())
	sb.n += int64(len(b.Data()))
	if !owned {
		if sb.arena == nil {
			sb.arena = make([]byte, 0, batchChunks*int(sb.s.params.Max))
		}
		if len(sb.arena)+len(b.Data()) <= cap(sb.arena) {
			sb.arena, b = b.AppendTo(sb.arena)
		} else {
			_, b = b.AppendTo(nil)
		}
	}
	sb.pending = append(sb.pending, b)
	if len(sb.pending) >= batchChunks {
		return sb.flush()
	}
	return nil
}

// flush stores the chunks held and announces them.
func (sb *storeBatch) flush() error {
	if len(sb.pending) == 0 {
		return nil
	}
	// A statfs per batch: the disk's reserve holds whatever a source
	// sends, a blob of unknown size included.
	var need int64
	for _, b := range sb.pending {
		need += int64(len(b.Data()))
	}
	if err := sb.s.cfg.Store.Reserve(need); err != nil {
		return fmt.Errorf("blob %s: %w", sb.digest, err)
	}
	if err := sb.s.cfg.Store.Put(sb.ctx, sb.pending...); err != nil {
		return err
	}
	for _, b := range sb.pending {
		ref := chunk.Ref{CID: b.CID(), Size: uint32(len(b.Data()))}
		sb.refs = append(sb.refs, ref)
		if sb.onChunk != nil {
			sb.onChunk(ref)
		}
	}
	sb.pending, sb.arena = nil, nil // the store may hold on to what it was given
	return nil
}

// commit stores what is held and publishes the blob if it matched.
func (sb *storeBatch) commit(mediaType string) (*blob, error) {
	if err := sb.flush(); err != nil {
		return nil, err
	}
	return sb.s.commit(sb.ctx, sb.h, sb.n, sb.digest, mediaType, sb.size, sb.refs)
}

// commit publishes chunks already stored as the blob digest, after
// checking what they hashed to.
func (s *Service) commit(ctx context.Context, h hash.Hash, n int64, digest, mediaType string, size int64, refs []chunk.Ref) (*blob, error) {
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != digest {
		return nil, fmt.Errorf("%w: %s hashes to %s", errDigest, digest, got)
	}
	if size >= 0 && n != size {
		return nil, fmt.Errorf("%w: %s: %d bytes, %d announced", errDigest, digest, n, size)
	}
	m, err := blobManifest(s.params, digest, mediaType, n, refs)
	if err != nil {
		return nil, err
	}
	enc, id, err := m.Encode()
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", digest, err)
	}
	if _, err := s.cfg.Publisher.Publish(ctx, blobName(digest), id, enc, m); err != nil {
		return nil, fmt.Errorf("publish blob %s: %w", digest, err)
	}
	b := &blob{Digest: digest, MediaType: mediaType, Size: n, Refs: refs, ID: id}
	s.mark(s.verified, digest)
	s.m.stored.Add(float64(n))
	return b, nil
}

// tag publishes repo:tag (under ns) as the manifest kept in b, unless the
// cluster maps it there already and recently.
func (s *Service) tag(ctx context.Context, ns, repo, tag string, b *blob) error {
	name, err := refName(ns, repo, tag)
	if err != nil {
		return err
	}
	if mp, ok := s.cfg.Catalog.Lookup(name.String()); ok && mp.CID == b.ID.String() && s.fresh(mp.Published) {
		return nil
	}
	m, err := blobManifest(s.params, b.Digest, b.MediaType, b.Size, b.Refs)
	if err != nil {
		return err
	}
	enc, id, err := m.Encode()
	if err != nil {
		return err
	}
	if _, err := s.cfg.Publisher.Publish(ctx, name, id, enc, m); err != nil {
		return fmt.Errorf("publish %s: %w", name, err)
	}
	return nil
}

// local is the blob with digest d when this host holds all of it.
func (s *Service) local(ctx context.Context, d string) (*blob, bool) {
	l, err := s.cfg.Store.GetLayer(ctx, blobName(d))
	if err != nil || l.State != chunk.Complete {
		return nil, false
	}
	id, err := cid.Decode(l.CID)
	if err != nil {
		return nil, false
	}
	m, err := s.cfg.Store.GetManifest(ctx, id)
	if err != nil {
		return nil, false
	}
	b, err := blobOf(id, m)
	if err != nil || b.Digest != d {
		return nil, false
	}
	return b, true
}

// mark adds digest d to set (s.verified, s.distrusted).
func (s *Service) mark(set map[string]bool, d string) {
	s.mu.Lock()
	set[d] = true
	s.mu.Unlock()
}

// marked says whether digest d is in set.
func (s *Service) marked(set map[string]bool, d string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return set[d]
}

// verifyLocal hashes a stored blob once (a layer fetched by other means
// than this registry, or kept from before a restart) before it is served
// in parts.
func (s *Service) verifyLocal(ctx context.Context, b *blob) error {
	if s.marked(s.verified, b.Digest) {
		return nil
	}
	h := sha256.New()
	buf := make([]byte, 0, chunk.MaxChunkSize)
	for _, r := range b.Refs {
		data, err := s.cfg.Store.GetInto(ctx, r.CID, buf)
		if err != nil {
			return fmt.Errorf("blob %s: %w", b.Digest, err)
		}
		h.Write(data)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != b.Digest {
		return fmt.Errorf("%w: stored blob %s hashes to %s", errDigest, b.Digest, got)
	}
	s.mark(s.verified, b.Digest)
	return nil
}

// readAll is a small stored blob (a manifest) in one piece, checked.
func (s *Service) readAll(ctx context.Context, b *blob) ([]byte, error) {
	if b.Size > maxManifest {
		return nil, fmt.Errorf("manifest %s: %d bytes, at most %d", b.Digest, b.Size, maxManifest)
	}
	out := make([]byte, 0, b.Size)
	for _, r := range b.Refs {
		data, err := s.cfg.Store.GetInto(ctx, r.CID, nil)
		if err != nil {
			return nil, fmt.Errorf("manifest %s: %w", b.Digest, err)
		}
		out = append(out, data...)
	}
	if got := digestOf(out); got != b.Digest {
		return nil, fmt.Errorf("%w: manifest %s hashes to %s", errDigest, b.Digest, got)
	}
	return out, nil
}
