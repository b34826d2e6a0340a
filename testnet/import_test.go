package testnet_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/p2pimg/p2pimg/chunk/oci"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/testnet"
)

type tarEntry struct {
	name, body, link string
	typ              byte
}

func tarOf(t *testing.T, es []tarEntry, gz bool) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w *tar.Writer
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(&buf)
		w = tar.NewWriter(zw)
	} else {
		w = tar.NewWriter(&buf)
	}
	for _, e := range es {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.body)), Linkname: e.link, ModTime: time.Unix(1700000000, 0)}
		if e.typ == tar.TypeDir {
			h.Mode = 0o755
		}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := w.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(e.body))
	}
	w.Close()
	if zw != nil {
		zw.Close()
	}
	return buf.Bytes()
}

// ociLayout writes an OCI image layout with the given layer blobs and
// returns it as one tar file.
func ociLayout(t *testing.T, ref string, layers ...[]byte) string {
	t.Helper()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755)
	blob := func(b []byte) string {
		s := sha256.Sum256(b)
		h := hex.EncodeToString(s[:])
		os.WriteFile(filepath.Join(dir, "blobs", "sha256", h), b, 0o644)
		return "sha256:" + h
	}
	type desc struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Size        int               `json:"size"`
		Annotations map[string]string `json:"annotations,omitempty"`
	}
	cfg := configFor(t, layers...)
	man := map[string]any{"schemaVersion": 2, "config": desc{"application/vnd.oci.image.config.v1+json", blob(cfg), len(cfg), nil}}
	var ls []desc
	for _, l := range layers {
		mt := "application/vnd.oci.image.layer.v1.tar"
		if l[0] == 0x1f {
			mt += "+gzip"
		}
		ls = append(ls, desc{mt, blob(l), len(l), nil})
	}
	man["layers"] = ls
	mb, _ := json.Marshal(man)
	idx := map[string]any{"schemaVersion": 2, "manifests": []desc{{"application/vnd.oci.image.manifest.v1+json", blob(mb), len(mb), map[string]string{"org.opencontainers.image.ref.name": ref}}}}
	ib, _ := json.Marshal(idx)
	os.WriteFile(filepath.Join(dir, "index.json"), ib, 0o644)
	os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
	// Tar the layout directory.
	var es []tarEntry
	filepath.Walk(dir, func(p string, fi os.FileInfo, _ error) error {
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		if fi.IsDir() {
			es = append(es, tarEntry{name: rel + "/", typ: tar.TypeDir})
		} else {
			b, _ := os.ReadFile(p)
			es = append(es, tarEntry{name: rel, body: string(b), typ: tar.TypeReg})
		}
		return nil
	})
	out := filepath.Join(t.TempDir(), "image.tar")
	os.WriteFile(out, tarOf(t, es, false), 0o644)
	return out
}

// Import a small OCI image built here (a gzip layer and a plain one with a
// whiteout and a hard link): one p2pimg layer per image layer, stacked, and
// the top one checks out as the image's root file system. A tampered blob
// is refused.
func TestImportOCILayout(t *testing.T) {
	net := testnet.New(t, 1)
	n0 := net.Nodes[0]
	l1 := tarOf(t, []tarEntry{
		{name: "etc/", typ: tar.TypeDir}, {name: "bin/", typ: tar.TypeDir},
		{name: "etc/os-release", body: "alpine", typ: tar.TypeReg}, {name: "etc/passwd", body: "root", typ: tar.TypeReg},
		{name: "bin/sh", body: "sh", typ: tar.TypeReg}, {name: "bin/ash", link: "sh", typ: tar.TypeSymlink},
	}, true)
	l2 := tarOf(t, []tarEntry{
		{name: "etc/", typ: tar.TypeDir}, {name: "etc/.wh.passwd", typ: tar.TypeReg},
		{name: "etc/os-release", body: "alpine 2", typ: tar.TypeReg},
		{name: "opt/", typ: tar.TypeDir}, {name: "opt/app", body: "app", typ: tar.TypeReg},
		{name: "opt/app2", link: "opt/app", typ: tar.TypeLink},
	}, false)
	img := ociLayout(t, "demo:1", l1, l2)
	r, err := n0.Client.Import(ctx, api.ImportRequest{Path: img}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Layers) != 2 || r.Layers[1].Name != "demo:1" || r.Layers[0].Name != "demo-layer1:1" {
		t.Fatalf("layers: %+v", r.Layers)
	}
	want := map[string]string{
		"etc/": "", "etc/os-release": "alpine 2", "bin/": "", "bin/sh": "sh", "bin/ash": "-> sh",
		"opt/": "", "opt/app": "app", "opt/app2": "app",
	}
	sameFiles(t, "imported image", checkoutTree(t, n0, "demo:1"), want)

	// A flipped byte in a layer blob: refused, naming the digest.
	dir := t.TempDir()
	f, _ := os.Open(img)
	if _, err := oci.Untar(context.Background(), f, dir, false, oci.Limits{}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	blobs, _ := filepath.Glob(filepath.Join(dir, "blobs", "sha256", "*"))
	for _, b := range blobs {
		data, _ := os.ReadFile(b)
		if len(data) == len(l2) {
			data[len(data)/2] ^= 1
			os.WriteFile(b, data, 0o644)
		}
	}
	_, err = n0.Client.Import(ctx, api.ImportRequest{Path: dir, Name: "bad:1"}, nil)
	if err == nil || !strings.Contains(err.Error(), "tampered") {
		t.Fatalf("tampered layer: %v", err)
	}
}

// The same image as a `docker save` archive (manifest.json, layer.tar per
// layer directory, a repository tag).
func TestImportDockerSave(t *testing.T) {
	net := testnet.New(t, 1)
	n0 := net.Nodes[0]
	l1 := tarOf(t, []tarEntry{{name: "etc/", typ: tar.TypeDir}, {name: "etc/a", body: "a", typ: tar.TypeReg}, {name: "etc/b", body: "b", typ: tar.TypeReg}}, false)
	l2 := tarOf(t, []tarEntry{{name: "etc/", typ: tar.TypeDir}, {name: "etc/.wh.a", typ: tar.TypeReg}, {name: "etc/c", body: "c", typ: tar.TypeReg}}, false)
	p := filepath.Join(t.TempDir(), "save.tar")
	os.WriteFile(p, dockerSave(t, nil, l1, l2), 0o644)
	r, err := n0.Client.Import(ctx, api.ImportRequest{Path: p}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Layers) != 2 || r.Layers[1].Name != "web/app:2.1" {
		t.Fatalf("layers: %+v", r.Layers)
	}
	sameFiles(t, "docker save import", checkoutTree(t, n0, "web/app:2.1"), map[string]string{"etc/": "", "etc/b": "b", "etc/c": "c"})
}

// configFor is an image config whose rootfs.diff_ids are the digests of
// the layers' uncompressed tars.
func configFor(t *testing.T, layers ...[]byte) []byte {
	t.Helper()
	var ids []string
	for _, l := range layers {
		raw := l
		if l[0] == 0x1f {
			zr, err := gzip.NewReader(bytes.NewReader(l))
			if err != nil {
				t.Fatal(err)
			}
			raw, _ = io.ReadAll(zr)
		}
		s := sha256.Sum256(raw)
		ids = append(ids, "sha256:"+hex.EncodeToString(s[:]))
	}
	b, _ := json.Marshal(map[string]any{"rootfs": map[string]any{"type": "layers", "diff_ids": ids}})
	return b
}

// dockerSave is a legacy `docker save` archive of the layers (manifest.json,
// a config named by its digest, lK/layer.tar), with extra entries last.
func dockerSave(t *testing.T, extra []tarEntry, layers ...[]byte) []byte {
	t.Helper()
	return dockerSaveTagged(t, "web/app:2.1", extra, layers...)
}

// dockerSaveTagged is dockerSave with the image's reference.
func dockerSaveTagged(t *testing.T, ref string, extra []tarEntry, layers ...[]byte) []byte {
	t.Helper()
	cfg := configFor(t, layers...)
	s := sha256.Sum256(cfg)
	cfgName := hex.EncodeToString(s[:]) + ".json"
	var paths []string
	es := []tarEntry{{name: cfgName, body: string(cfg), typ: tar.TypeReg}}
	for i, l := range layers {
		d := fmt.Sprintf("l%d", i+1)
		paths = append(paths, d+"/layer.tar")
		es = append(es, tarEntry{name: d + "/", typ: tar.TypeDir}, tarEntry{name: d + "/layer.tar", body: string(l), typ: tar.TypeReg})
	}
	man, _ := json.Marshal([]map[string]any{{"Config": cfgName, "RepoTags": []string{ref}, "Layers": paths}})
	es = append(es, tarEntry{name: "manifest.json", body: string(man), typ: tar.TypeReg})
	return tarOf(t, append(es, extra...), false)
}

// Hostile archives are refused and leave the daemon working: a layer.tar
// symlinked to a host file, a manifest.json symlinked inside the archive,
// a tampered legacy layer, a gzip bomb. gc runs after each (no import
// holds it).
func TestImportHostileArchives(t *testing.T) {
	net := testnet.New(t, 1)
	n0 := net.Nodes[0]
	secret := filepath.Join(t.TempDir(), "host-secret")
	os.WriteFile(secret, tarOf(t, []tarEntry{{name: "loot", body: "host bytes", typ: tar.TypeReg}}, false), 0o600)
	good := tarOf(t, []tarEntry{{name: "etc/", typ: tar.TypeDir}, {name: "etc/a", body: "a", typ: tar.TypeReg}}, false)
	tampered := tarOf(t, []tarEntry{{name: "etc/", typ: tar.TypeDir}, {name: "etc/a", body: "evil", typ: tar.TypeReg}}, false)

	var zeros bytes.Buffer // 64 MiB of zeros in about 64 KiB
	zw := gzip.NewWriter(&zeros)
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Name: "zeros", Typeflag: tar.TypeReg, Size: 64 << 20, Mode: 0o644})
	tw.Write(make([]byte, 64<<20))
	tw.Close()
	zw.Close()

	cases := []struct {
		name    string
		archive []byte
		want    string
	}{
		{"layer.tar -> host file", dockerSave(t, []tarEntry{{name: "l1/layer.tar", link: secret, typ: tar.TypeSymlink}}, good), "symlink"},
		{"manifest.json -> inside", dockerSave(t, []tarEntry{{name: "real.json", body: "[]", typ: tar.TypeReg}, {name: "manifest.json", link: "real.json", typ: tar.TypeSymlink}}, good), "symlink"},
		{"tampered legacy layer", dockerSave(t, []tarEntry{{name: "l1/layer.tar", body: string(tampered), typ: tar.TypeReg}}, good), "diff_id"},
		{"gzip bomb", dockerSave(t, nil, zeros.Bytes()), "import limits"},
	}
	for _, c := range cases {
		p := filepath.Join(t.TempDir(), "image.tar")
		os.WriteFile(p, c.archive, 0o644)
		_, err := n0.Client.Import(ctx, api.ImportRequest{Path: p, Name: "hostile:1"}, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want a refusal naming %q", c.name, err, c.want)
		}
		if _, err := n0.Client.GC(ctx); err != nil {
			t.Fatalf("gc after %s: %v", c.name, err)
		}
	}
	if ls, _ := n0.Client.Layers(ctx); len(ls) != 0 {
		t.Fatalf("a hostile archive left layers: %+v", ls)
	}
	tmp, _ := os.ReadDir(filepath.Join(n0.Data, "tmp"))
	if len(tmp) != 0 {
		t.Fatalf("imports left %d entries in DATA/tmp", len(tmp))
	}
}
