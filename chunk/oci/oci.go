// Package oci reads container images (a `docker save` tar, or an OCI image
// layout as a directory or a tar) so that each image layer can become a
// p2pimg layer. It verifies every blob against its digest before using it,
// and extracts layer tars through os.Root, so a hostile archive cannot
// write outside the directory it is extracted into. It does no networking.
package oci

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/p2pimg/p2pimg/chunk"
)

// Image is a container image found in a layout directory: its layer blobs,
// base first, and the reference it was saved under ("" if none).
type Image struct {
	Dir    string
	Ref    string   // e.g. "library/alpine:3.20" or an OCI ref name
	Layers []string // blob paths under Dir, base first
	Digest []string // "sha256:..." of each layer blob, when the format gives it
}

const maxJSON = 4 << 20

func readJSON(dir, name string, v any) error {
	f, err := os.Open(filepath.Join(dir, filepath.FromSlash(name)))
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
// or a `docker save` directory (manifest.json).
func Open(dir string) (*Image, error) {
	if _, err := os.Stat(filepath.Join(dir, "index.json")); err == nil {
		return openOCI(dir)
	}
	if _, err := os.Stat(filepath.Join(dir, "manifest.json")); err == nil {
		return openDocker(dir)
	}
	return nil, errors.New("not a container image: no index.json (OCI layout) or manifest.json (docker save)")
}

func openOCI(dir string) (*Image, error) {
	var idx struct {
		Manifests []descriptor `json:"manifests"`
	}
	if err := readJSON(dir, "index.json", &idx); err != nil {
		return nil, err
	}
	if len(idx.Manifests) != 1 {
		return nil, fmt.Errorf("index.json lists %d images; import takes a layout with exactly one", len(idx.Manifests))
	}
	d := idx.Manifests[0]
	mp, err := blobPath(d.Digest)
	if err != nil {
		return nil, err
	}
	if err := checkDigest(filepath.Join(dir, mp), d.Digest); err != nil {
		return nil, fmt.Errorf("image manifest: %w", err)
	}
	var man struct {
		Layers []descriptor `json:"layers"`
	}
	if err := readJSON(dir, mp, &man); err != nil {
		return nil, err
	}
	img := &Image{Dir: dir, Ref: d.Annotations["org.opencontainers.image.ref.name"]}
	for _, l := range man.Layers {
		if strings.Contains(l.MediaType, "zstd") {
			return nil, fmt.Errorf("layer %s is zstd-compressed: not supported (gzip or plain tar)", l.Digest)
		}
		p, err := blobPath(l.Digest)
		if err != nil {
			return nil, err
		}
		img.Layers, img.Digest = append(img.Layers, p), append(img.Digest, l.Digest)
	}
	return img, nil
}

func openDocker(dir string) (*Image, error) {
	var man []struct {
		RepoTags []string
		Layers   []string
	}
	if err := readJSON(dir, "manifest.json", &man); err != nil {
		return nil, err
	}
	if len(man) != 1 {
		return nil, fmt.Errorf("manifest.json lists %d images; import takes an archive with exactly one", len(man))
	}
	img := &Image{Dir: dir}
	if len(man[0].RepoTags) > 0 {
		img.Ref = man[0].RepoTags[0]
	}
	for _, l := range man[0].Layers {
		if err := chunk.CheckPath(l); err != nil {
			return nil, fmt.Errorf("manifest.json: layer %q: %v", l, err)
		}
		d := ""
		if strings.HasPrefix(l, "blobs/sha256/") { // newer docker save: digests are the names
			d = "sha256:" + strings.TrimPrefix(l, "blobs/sha256/")
		}
		img.Layers, img.Digest = append(img.Layers, l), append(img.Digest, d)
	}
	return img, nil
}

// checkDigest verifies a blob against its sha256 digest.
func checkDigest(p, d string) error {
	f, err := os.Open(p)
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

// ExtractLayer verifies layer i against its digest and unpacks it (gzip or
// plain tar) into dst, which must exist and be empty. OCI whiteouts (.wh.
// files) are kept as files. Devices and fifos are skipped, hard links
// become copies. Owners are restored when owners is set.
func (img *Image) ExtractLayer(i int, dst string, owners bool) (skipped []string, err error) {
	p := filepath.Join(img.Dir, filepath.FromSlash(img.Layers[i]))
	if d := img.Digest[i]; d != "" {
		if err := checkDigest(p, d); err != nil {
			return nil, fmt.Errorf("layer %d: %w", i+1, err)
		}
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	var r io.Reader = br
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i+1, err)
		}
		defer gz.Close()
		r = gz
	}
	return Untar(r, dst, owners)
}

// Untar unpacks a tar stream into dst through os.Root.
func Untar(r io.Reader, dst string, owners bool) (skipped []string, err error) {
	root, err := os.OpenRoot(dst)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	type dirTime struct {
		p string
		t time.Time
	}
	var dirs []dirTime
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return skipped, fmt.Errorf("tar: %w", err)
		}
		name := strings.TrimPrefix(path.Clean("/"+h.Name), "/")
		if name == "" {
			continue
		}
		if err := chunk.CheckPath(name); err != nil {
			return skipped, fmt.Errorf("tar entry %q: %v", h.Name, err)
		}
		if dir := path.Dir(name); dir != "." {
			if err := root.MkdirAll(dir, 0o755); err != nil {
				return skipped, fmt.Errorf("tar entry %q: %w", h.Name, err)
			}
		}
		mode := fs.FileMode(h.Mode) & fs.ModePerm
		if h.Mode&0o4000 != 0 {
			mode |= fs.ModeSetuid
		}
		if h.Mode&0o2000 != 0 {
			mode |= fs.ModeSetgid
		}
		if h.Mode&0o1000 != 0 {
			mode |= fs.ModeSticky
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.Mkdir(name, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return skipped, fmt.Errorf("tar entry %q: %w", h.Name, err)
			}
			root.Chmod(name, mode)
			dirs = append(dirs, dirTime{name, h.ModTime})
		case tar.TypeReg:
			err = writeFile(root, name, tr, mode)
		case tar.TypeSymlink:
			root.Remove(name)
			err = root.Symlink(h.Linkname, name)
		case tar.TypeLink:
			target := strings.TrimPrefix(path.Clean("/"+h.Linkname), "/")
			var src *os.File
			if src, err = root.Open(target); err == nil {
				err = writeFile(root, name, src, mode)
				src.Close()
			}
		default:
			if h.Typeflag == 0 { // very old tars: a regular file
				err = writeFile(root, name, tr, mode)
				break
			}
			skipped = append(skipped, name)
			continue
		}
		if err != nil {
			return skipped, fmt.Errorf("tar entry %q: %w", h.Name, err)
		}
		if owners {
			root.Lchown(name, h.Uid, h.Gid)
		}
		if h.Typeflag != tar.TypeSymlink && h.Typeflag != tar.TypeDir {
			root.Chtimes(name, h.ModTime, h.ModTime)
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- { // after their contents
		root.Chtimes(dirs[i].p, dirs[i].t, dirs[i].t)
	}
	return skipped, nil
}

func writeFile(root *os.Root, name string, r io.Reader, mode fs.FileMode) error {
	root.Remove(name)
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return root.Chmod(name, mode)
}
