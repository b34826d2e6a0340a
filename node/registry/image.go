package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/oci"
)

type descriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
}

// KeepImage keeps the original blobs of the image in the OCI layout at dir
// (its manifest, config and layers, exact bytes, each checked against its
// digest) and tags the manifest as name, so any host's mirror serves the
// image as NAME:TAG. A layout without index.json (an older `docker save`)
// has no registry manifest to keep: warning says so and nothing is kept.
func (s *Service) KeepImage(ctx context.Context, root *os.Root, name chunk.Name) (warning string, err error) {
	f, err := oci.OpenRegular(root, "index.json")
	if os.IsNotExist(err) {
		return fmt.Sprintf("%s: the archive has no OCI index (an older docker save): the image is imported as layers but cannot be pulled through the registry mirror", name), nil
	}
	if err != nil {
		return "", err
	}
	idxData, err := io.ReadAll(io.LimitReader(f, 4<<20))
	f.Close()
	if err != nil {
		return "", err
	}
	var idx struct {
		Manifests []descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(idxData, &idx); err != nil || len(idx.Manifests) != 1 {
		return "", fmt.Errorf("index.json: want one image manifest (%v)", err)
	}
	md := idx.Manifests[0]
	b, err := s.keepFile(ctx, root, md)
	if err != nil {
		return "", fmt.Errorf("image manifest: %w", err)
	}
	n, err := s.keepReferenced(ctx, root, b, 1)
	if err != nil {
		return "", err
	}
	if err := s.tag(ctx, "", name.Repo, name.Tag, b); err != nil {
		return "", err
	}
	s.cfg.Log.Info("image blobs kept for the registry", "image", name.String(), "manifest", md.Digest, "blobs", n)
	return "", nil
}

// keepReferenced keeps what manifest b refers to: its config and layers,
// or, for an index, every platform's manifest (down depth more levels)
// and what those refer to. It returns how many blobs it kept.
func (s *Service) keepReferenced(ctx context.Context, root *os.Root, b *blob, depth int) (int, error) {
	data, err := s.readAll(ctx, b)
	if err != nil {
		return 0, err
	}
	var man struct {
		Config    descriptor   `json:"config"`
		Layers    []descriptor `json:"layers"`
		Manifests []descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(data, &man); err != nil {
		return 0, fmt.Errorf("image manifest %s: %w", b.Digest, err)
	}
	n := 0
	for _, d := range man.Manifests {
		if depth <= 0 {
			return 0, fmt.Errorf("image index %s: indexes nested more than two deep are not imported", b.Digest)
		}
		mb, err := s.keepFile(ctx, root, d)
		if err != nil {
			return 0, fmt.Errorf("image index %s: manifest: %w", b.Digest, err)
		}
		k, err := s.keepReferenced(ctx, root, mb, depth-1)
		if err != nil {
			return 0, err
		}
		n += k + 1
	}
	for _, d := range append(man.Layers, man.Config) {
		if d.Digest == "" {
			continue
		}
		if _, err := s.keepFile(ctx, root, descriptor{Digest: d.Digest, Size: d.Size}); err != nil {
			return 0, err
		}
		n++
	}
	return n, nil
}

// keepFile ingests blob d of an OCI layout (unless already kept here).
func (s *Service) keepFile(ctx context.Context, root *os.Root, d descriptor) (*blob, error) {
	hx, err := parseDigest(d.Digest)
	if err != nil {
		return nil, err
	}
	if b, ok := s.local(ctx, d.Digest); ok && (d.MediaType == "" || b.MediaType == d.MediaType) {
		return b, nil
	}
	f, err := oci.OpenRegular(root, filepath.Join("blobs", "sha256", hx))
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	defer f.Close()
	size := d.Size
	if size == 0 {
		size = -1
	}
	return s.ingest(ctx, f, d.Digest, d.MediaType, size, nil)
}
