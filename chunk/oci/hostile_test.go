package oci

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// layerTar is a small layer: one file.
func layerTar(t testing.TB, name string, body []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	w.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Size: int64(len(body)), Mode: 0o644})
	w.Write(body)
	w.Close()
	return buf.Bytes()
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// dockerSave writes a legacy `docker save` directory: manifest.json, a
// config named by its digest with the layers' diff_ids, <id>/layer.tar.
func dockerSave(t testing.TB, layers ...[]byte) string {
	t.Helper()
	dir := t.TempDir()
	var ids, paths []string
	for i, l := range layers {
		ids = append(ids, `"sha256:`+digest(l)+`"`)
		p := filepath.Join("l"+string(rune('0'+i)), "layer.tar")
		os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(dir, p), l, 0o644)
		paths = append(paths, `"`+p+`"`)
	}
	cfg := []byte(`{"rootfs":{"type":"layers","diff_ids":[` + strings.Join(ids, ",") + `]}}`)
	os.WriteFile(filepath.Join(dir, digest(cfg)+".json"), cfg, 0o644)
	man := `[{"Config":"` + digest(cfg) + `.json","RepoTags":["a/b:1"],"Layers":[` + strings.Join(paths, ",") + `]}]`
	os.WriteFile(filepath.Join(dir, "manifest.json"), []byte(man), 0o644)
	return dir
}

func extractAll(img *Image, lim Limits) error {
	for i := range img.Layers {
		dst, err := os.MkdirTemp("", "oci-layer-")
		if err != nil {
			return err
		}
		_, err = img.ExtractLayer(context.Background(), i, dst, false, lim)
		os.RemoveAll(dst)
		if err != nil {
			return err
		}
	}
	return nil
}

// Legacy docker-save layers are checked against the config's diff_ids:
// a tampered layer.tar is refused, naming the digests.
func TestDockerSaveLayersVerified(t *testing.T) {
	t.Parallel()
	good := layerTar(t, "etc/a", []byte("a"))
	dir := dockerSave(t, good)
	img, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := extractAll(img, Limits{}); err != nil {
		t.Fatalf("untampered: %v", err)
	}
	img.Close()
	os.WriteFile(filepath.Join(dir, "l0", "layer.tar"), layerTar(t, "etc/a", []byte("b")), 0o644)
	img, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if err := extractAll(img, Limits{}); err == nil || !strings.Contains(err.Error(), "diff_id") {
		t.Fatalf("tampered layer.tar: %v, want a diff_id mismatch", err)
	}
	// A config not named by its digest cannot vouch for the layers.
	os.WriteFile(filepath.Join(dir, "manifest.json"), []byte(`[{"Config":"config.json","Layers":["l0/layer.tar"]}]`), 0o644)
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{}`), 0o644)
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "not named by its digest") {
		t.Fatalf("undigested config: %v", err)
	}
}

// Symlinks, fifos and directories where the layout must hold a file are
// refused before anything is read: a symlink to a host file, one that
// stays inside, a fifo (which would block a reader forever).
func TestLayoutRefusesNonRegular(t *testing.T) {
	t.Parallel()
	host := filepath.Join(t.TempDir(), "host-secret")
	os.WriteFile(host, []byte("secret"), 0o600)
	cases := []struct {
		name  string
		plant func(dir string)
		want  string
	}{
		{"manifest.json -> host file", func(dir string) {
			os.Remove(filepath.Join(dir, "manifest.json"))
			os.Symlink(host, filepath.Join(dir, "manifest.json"))
		}, "symlink"},
		{"layer.tar -> host file", func(dir string) {
			os.Remove(filepath.Join(dir, "l0", "layer.tar"))
			os.Symlink(host, filepath.Join(dir, "l0", "layer.tar"))
		}, "symlink"},
		{"layer.tar -> inside", func(dir string) {
			os.Rename(filepath.Join(dir, "l0", "layer.tar"), filepath.Join(dir, "l0", "real.tar"))
			os.Symlink("real.tar", filepath.Join(dir, "l0", "layer.tar"))
		}, "symlink"},
		{"layer.tar is a fifo", func(dir string) {
			os.Remove(filepath.Join(dir, "l0", "layer.tar"))
			if err := syscall.Mkfifo(filepath.Join(dir, "l0", "layer.tar"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, "fifo"},
		{"layer.tar is a directory", func(dir string) {
			os.Remove(filepath.Join(dir, "l0", "layer.tar"))
			os.Mkdir(filepath.Join(dir, "l0", "layer.tar"), 0o755)
		}, "directory"},
	}
	for _, c := range cases {
		dir := dockerSave(t, layerTar(t, "etc/a", []byte("a")))
		c.plant(dir)
		img, err := Open(dir)
		if err == nil {
			err = extractAll(img, Limits{})
			img.Close()
		}
		if !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want a refusal naming %q", c.name, err, c.want)
		}
	}
}

// gzipped is a gzip'd layer holding one file of n zero bytes: it
// compresses about a thousandfold.
func gzipped(t testing.TB, n int) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	w := tar.NewWriter(gz)
	w.WriteHeader(&tar.Header{Name: "zeros", Typeflag: tar.TypeReg, Size: int64(n), Mode: 0o644})
	w.Write(make([]byte, n))
	w.Close()
	gz.Close()
	return buf.Bytes()
}

// Decompression is bounded: by a ratio (a gzip bomb layer), by an
// absolute size (refused before the file is written), and by free space;
// a cancelled unpacking stops.
func TestUnpackBounded(t *testing.T) {
	t.Parallel()
	bomb := gzipped(t, 64<<20)
	img, err := Open(dockerSave(t, bomb))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	dst := t.TempDir()
	_, err = img.ExtractLayer(context.Background(), 0, dst, false, Limits{MaxRatio: 100})
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "more than 100x") {
		t.Errorf("gzip bomb: %v, want the ratio named", err)
	}
	if fi, err := os.Stat(filepath.Join(dst, "zeros")); err == nil && fi.Size() > 8<<20 {
		t.Errorf("gzip bomb: %d bytes written past the ratio", fi.Size())
	}

	plain := layerTar(t, "zeros", make([]byte, 16<<20))
	cases := []struct {
		name string
		lim  Limits
		want string
	}{
		{"absolute", Limits{MaxBytes: 8 << 20}, "would take it past"},
		{"free space", Limits{Free: func() (int64, error) { return 8 << 20, nil }, Reserve: 1 << 20}, "bytes free"},
	}
	for _, c := range cases {
		dst := t.TempDir()
		_, err := Untar(context.Background(), bytes.NewReader(plain), dst, false, c.lim)
		if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
		if _, err := os.Stat(filepath.Join(dst, "zeros")); err == nil {
			t.Errorf("%s: the file was written before the refusal", c.name)
		}
	}
	if _, err := Untar(context.Background(), bytes.NewReader(plain), t.TempDir(), false, Limits{MaxRatio: 2, MaxBytes: 1 << 30}); err != nil {
		t.Fatalf("within the limits: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Untar(ctx, bytes.NewReader(plain), t.TempDir(), false, Limits{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}

func FuzzOpenDockerSave(f *testing.F) {
	f.Add([]byte(`[{"Config":"`+strings.Repeat("a", 64)+`.json","Layers":["l0/layer.tar"]}]`), []byte(`{"rootfs":{"diff_ids":["sha256:`+strings.Repeat("b", 64)+`"]}}`))
	f.Fuzz(func(t *testing.T, man, cfg []byte) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "manifest.json"), man, 0o644)
		os.WriteFile(filepath.Join(dir, digest(cfg)+".json"), cfg, 0o644)
		if img, err := Open(dir); err == nil {
			if len(img.DiffIDs) != len(img.Layers) {
				t.Fatalf("%d diff_ids for %d layers accepted", len(img.DiffIDs), len(img.Layers))
			}
			img.Close()
		}
	})
}
