// Package oci reads container images (a `docker save` tar, or an OCI image
// layout as a directory or a tar) so that each image layer can become a
// p2pimg layer. It verifies every blob against its digest and every layer
// against the config's diff_ids before using it; it reads the layout and
// extracts layer tars through os.Root, refusing a symlink, fifo or device
// where a file is expected, so a hostile archive can neither read nor
// write outside its directory, nor hang a reader; and it bounds what
// decompression may write. It does no networking.
package oci

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/tree"
)

// Image is a container image found in a layout directory: its layer blobs,
// base first, and the reference it was saved under ("" if none).
type Image struct {
	Dir    string
	Root   *os.Root // every read of the layout goes through it
	Ref    string   // e.g. "library/alpine:3.20" or an OCI ref name
	Layers []string // blob paths under Dir, base first
	Digest []string // "sha256:..." of each layer blob, when the format gives it
	// DiffIDs are the config's rootfs.diff_ids: the sha256 of each layer's
	// uncompressed tar, checked as it is extracted.
	DiffIDs []string
}

// Close releases the layout directory.
func (img *Image) Close() error { return img.Root.Close() }

const maxJSON = 4 << 20

// ErrNotRegular: a symlink, fifo, device or directory where the layout
// must hold a regular file.
var ErrNotRegular = tree.ErrNotRegular

// OpenRegular opens name under root for reading: see tree.OpenRegularIn.
func OpenRegular(root *os.Root, name string) (*os.File, error) {
	return tree.OpenRegularIn(root, name)
}

func readJSON(root *os.Root, name string, v any) error {
	f, err := OpenRegular(root, filepath.FromSlash(name))
	if err != nil {
		return err
	}
	defer f.Close()
	dec := json.NewDecoder(io.LimitReader(f, maxJSON))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Annotations map[string]string `json:"annotations"`
	Platform    *struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
	} `json:"platform"`
}

// isIndex says whether a media type is a multi-platform index.
func isIndex(mt string) bool {
	return mt == "application/vnd.oci.image.index.v1+json" || mt == "application/vnd.docker.distribution.manifest.list.v2+json"
}

// pickPlatform is the manifest of an index whose layers are imported:
// this machine's platform, else the first that names a real one
// (attestations say unknown/unknown).
func pickPlatform(ms []descriptor, goos, goarch string) (descriptor, error) {
	for _, m := range ms {
		if m.Platform != nil && m.Platform.OS == goos && m.Platform.Architecture == goarch && !isIndex(m.MediaType) {
			return m, nil
		}
	}
	for _, m := range ms {
		if m.Platform != nil && m.Platform.OS != "unknown" && !isIndex(m.MediaType) {
			return m, nil
		}
	}
	return descriptor{}, fmt.Errorf("the image index lists %d manifests and none for a platform (%s/%s or another)", len(ms), goos, goarch)
}

// blobPath is where an OCI layout keeps the blob with digest d.
func blobPath(d string) (string, error) {
	alg, hexd, ok := strings.Cut(d, ":")
	if !ok || alg != "sha256" || len(hexd) != 64 {
		return "", fmt.Errorf("digest %q: only sha256 digests are supported", d)
	}
	if _, err := hex.DecodeString(hexd); err != nil {
		return "", fmt.Errorf("digest %q: %v", d, err)
	}
	return "blobs/sha256/" + hexd, nil
}

// Open finds the image in a layout directory: an OCI layout (index.json)
// or a `docker save` directory (manifest.json). Close the image when done.
func Open(dir string) (*Image, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	img := &Image{Dir: dir, Root: root}
	switch {
	case exists(root, "index.json"):
		err = img.openOCI()
	case exists(root, "manifest.json"):
		err = img.openDocker()
	default:
		err = errors.New("not a container image: no index.json (OCI layout) or manifest.json (docker save)")
	}
	if err == nil && len(img.DiffIDs) != len(img.Layers) {
		err = fmt.Errorf("the image config lists %d diff_ids for %d layers: the layers cannot be verified", len(img.DiffIDs), len(img.Layers))
	}
	if err != nil {
		root.Close()
		return nil, err
	}
	return img, nil
}

func exists(root *os.Root, name string) bool {
	_, err := root.Lstat(name)
	return err == nil
}

// readConfig verifies the image config (blob p, digest d) and reads its
// rootfs.diff_ids.
func (img *Image) readConfig(p, d string) error {
	if err := checkDigest(img.Root, p, d); err != nil {
		return fmt.Errorf("image config: %w", err)
	}
	var cfg struct {
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := readJSON(img.Root, p, &cfg); err != nil {
		return fmt.Errorf("image config: %w", err)
	}
	for _, id := range cfg.RootFS.DiffIDs {
		if _, err := blobPath(id); err != nil {
			return fmt.Errorf("image config: diff_id: %w", err)
		}
	}
	img.DiffIDs = cfg.RootFS.DiffIDs
	return nil
}

func (img *Image) openOCI() error {
	var idx struct {
		Manifests []descriptor `json:"manifests"`
	}
	if err := readJSON(img.Root, "index.json", &idx); err != nil {
		return err
	}
	if len(idx.Manifests) != 1 {
		return fmt.Errorf("index.json lists %d images; import takes a layout with exactly one (an image or a multi-platform index)", len(idx.Manifests))
	}
	d := idx.Manifests[0]
	img.Ref = d.Annotations["org.opencontainers.image.ref.name"]
	if isIndex(d.MediaType) { // multi-platform: this platform's layers are imported
		ip, err := img.checkedBlob(d.Digest, "image index")
		if err != nil {
			return err
		}
		var inner struct {
			Manifests []descriptor `json:"manifests"`
		}
		if err := readJSON(img.Root, ip, &inner); err != nil {
			return err
		}
		if d, err = pickPlatform(inner.Manifests, runtime.GOOS, runtime.GOARCH); err != nil {
			return err
		}
	}
	mp, err := img.checkedBlob(d.Digest, "image manifest")
	if err != nil {
		return err
	}
	var man struct {
		Config descriptor   `json:"config"`
		Layers []descriptor `json:"layers"`
	}
	if err := readJSON(img.Root, mp, &man); err != nil {
		return err
	}
	cp, err := blobPath(man.Config.Digest)
	if err != nil {
		return fmt.Errorf("image config: %w", err)
	}
	if err := img.readConfig(cp, man.Config.Digest); err != nil {
		return err
	}
	for _, l := range man.Layers {
		if strings.Contains(l.MediaType, "zstd") {
			return fmt.Errorf("layer %s is zstd-compressed: not supported (gzip or plain tar)", l.Digest)
		}
		p, err := blobPath(l.Digest)
		if err != nil {
			return err
		}
		img.Layers, img.Digest = append(img.Layers, p), append(img.Digest, l.Digest)
	}
	return nil
}

// legacyConfig is a config file name of an older docker save: the hex
// sha256 of its bytes, then .json.
var legacyConfig = regexp.MustCompile(`^([0-9a-f]{64})\.json$`)

func (img *Image) openDocker() error {
	var man []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := readJSON(img.Root, "manifest.json", &man); err != nil {
		return err
	}
	if len(man) != 1 {
		return fmt.Errorf("manifest.json lists %d images; import takes an archive with exactly one", len(man))
	}
	if len(man[0].RepoTags) > 0 {
		img.Ref = man[0].RepoTags[0]
	}
	cfg := man[0].Config
	var cd string
	if m := legacyConfig.FindStringSubmatch(cfg); m != nil {
		cd = "sha256:" + m[1]
	} else if strings.HasPrefix(cfg, "blobs/sha256/") {
		cd = "sha256:" + strings.TrimPrefix(cfg, "blobs/sha256/")
	} else {
		return fmt.Errorf("manifest.json: config %q is not named by its digest (HEX.json or blobs/sha256/HEX): the layers cannot be verified", cfg)
	}
	if err := img.readConfig(cfg, cd); err != nil {
		return err
	}
	for _, l := range man[0].Layers {
		if err := chunk.CheckPath(l); err != nil {
			return fmt.Errorf("manifest.json: layer %q: %v", l, err)
		}
		d := ""
		if strings.HasPrefix(l, "blobs/sha256/") { // newer docker save: digests are the names
			d = "sha256:" + strings.TrimPrefix(l, "blobs/sha256/")
		}
		img.Layers, img.Digest = append(img.Layers, l), append(img.Digest, d)
	}
	return nil
}

// checkedBlob is the path of blob d (what it is, for errors), checked
// against its digest.
func (img *Image) checkedBlob(d, what string) (string, error) {
	p, err := blobPath(d)
	if err != nil {
		return "", err
	}
	if err := checkDigest(img.Root, p, d); err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	return p, nil
}

// checkDigest verifies blob p (under root) against its sha256 digest.
func checkDigest(root *os.Root, p, d string) error {
	f, err := OpenRegular(root, filepath.FromSlash(p))
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != d {
		return fmt.Errorf("blob %s has digest %s: the archive is corrupt or was tampered with", d, got)
	}
	return nil
}
