package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
)

// A hostile layer cannot write outside the extraction directory: not with
// "..", not through a symlink it planted.
func TestUntarStaysInside(t *testing.T) {
	t.Parallel()
	outside := t.TempDir()
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	w.WriteHeader(&tar.Header{Name: "../../escape", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644})
	w.Write([]byte("x"))
	w.WriteHeader(&tar.Header{Name: "evil", Typeflag: tar.TypeSymlink, Linkname: outside})
	w.WriteHeader(&tar.Header{Name: "evil/planted", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644})
	w.Write([]byte("y"))
	w.Close()
	dst := t.TempDir()
	_, err := Untar(context.Background(), &buf, dst, false, Limits{})
	if err == nil {
		t.Fatal("a write through a planted symlink was not refused")
	}
	if _, err := os.Stat(filepath.Join(outside, "planted")); !os.IsNotExist(err) {
		t.Fatal("the layer wrote outside its directory")
	}
	if b, err := os.ReadFile(filepath.Join(dst, "escape")); err != nil || string(b) != "x" {
		t.Fatalf("../../escape should land inside as escape: %v", err)
	}
}

func FuzzUntar(f *testing.F) {
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	w.WriteHeader(&tar.Header{Name: "a/b", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644})
	w.Write([]byte("x"))
	w.Close()
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		dst := t.TempDir()
		Untar(context.Background(), bytes.NewReader(data), dst, false, Limits{MaxBytes: 1 << 20}) // must not panic or escape
	})
}
