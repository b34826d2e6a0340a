package chunk

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/ipfs/go-cid"
)

func sampleManifest(t testing.TB) *Manifest {
	a, _ := SumCID([]byte("a"), SHA256)
	b, _ := SumCID([]byte("bb"), SHA256)
	return &Manifest{
		Params: DefaultParams(),
		Meta:   map[string]string{"product": "db", "description": "sample"},
		Entries: []Entry{
			{Path: "bin", Type: Dir, Mode: 0o755},
			{Path: "bin/sh", Type: File, Mode: 0o755, UID: 0, MTime: 1700000000123456789, Size: 3, Chunks: []Ref{{a, 1}, {b, 2}},
				Xattrs: map[string][]byte{"user.origin": []byte("build 7"), "security.capability": {1, 0, 0, 2}}},
			{Path: "bin/sh-hard", Type: File, Mode: 0o755, Size: 3, Chunks: []Ref{{a, 1}, {b, 2}}, Link: "bin/sh"},
			{Path: "bin/sh-link", Type: Symlink, Mode: 0o777, Target: "sh"},
			{Path: "empty", Type: File, Mode: 0o600},
		},
	}
}

func TestManifestRoundTrip(t *testing.T) {
	t.Parallel()
	m := sampleManifest(t)
	b, id, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	b2, id2, _ := sampleManifest(t).Encode()
	if id != id2 || string(b) != string(b2) {
		t.Fatal("encoding is not deterministic")
	}
	got, err := DecodeManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Entries) != 5 || got.Entries[1].Chunks[1].Size != 2 || got.Meta["product"] != "db" || got.Size() != 6 ||
		string(got.Entries[1].Xattrs["user.origin"]) != "build 7" || got.Entries[2].Link != "bin/sh" {
		t.Fatalf("round trip lost data: %+v", got)
	}
	if ManifestCID(b) != id || id.Type() != ManifestCodec {
		t.Fatal("manifest CID")
	}
}

func TestManifestRejects(t *testing.T) {
	t.Parallel()
	c, _ := SumCID([]byte("a"), SHA256)
	v0 := cid.NewCidV0(c.Hash())
	for _, tc := range []struct {
		name string
		edit func(m *Manifest)
		want string
	}{
		{"absolute path", func(m *Manifest) { m.Entries[0].Path = "/bin" }, "absolute"},
		{"dotdot", func(m *Manifest) { m.Entries[0].Path = "../bin" }, "leaves the layer"},
		{"unclean", func(m *Manifest) { m.Entries[0].Path = "bin/" }, "not clean"},
		{"unsorted", func(m *Manifest) { m.Entries[3], m.Entries[4] = m.Entries[4], m.Entries[3] }, "out of order"},
		{"duplicate", func(m *Manifest) { m.Entries[4].Path = "bin/sh-link" }, "out of order or repeated"},
		{"orphan", func(m *Manifest) { m.Entries = m.Entries[1:] }, "parent \"bin\""},
		{"under symlink", func(m *Manifest) { m.Entries[3].Path = "bin/sh-link"; m.Entries[4].Path = "bin/sh-link/x" }, "parent"},
		{"link to nothing", func(m *Manifest) { m.Entries[2].Link = "bin/zz" }, "hard link"},
		{"link to a later file", func(m *Manifest) { m.Entries[2].Link = "empty" }, "hard link"},
		{"link to itself", func(m *Manifest) { m.Entries[2].Link = "bin/sh-hard" }, "hard link"},
		{"link with other chunks", func(m *Manifest) { m.Entries[2].Chunks = m.Entries[2].Chunks[:1]; m.Entries[2].Size = 1 }, "hard link"},
		{"link of a symlink", func(m *Manifest) { m.Entries[3].Link = "bin/sh" }, "hard link"},
		{"xattr without namespace", func(m *Manifest) { m.Entries[0].Xattrs = map[string][]byte{"x": nil} }, "namespace"},
		{"overlay xattr", func(m *Manifest) { m.Entries[0].Xattrs = map[string][]byte{"trusted.overlay.opaque": []byte("y")} }, "overlayfs"},
		{"huge xattr", func(m *Manifest) { m.Entries[0].Xattrs = map[string][]byte{"user.x": make([]byte, 65<<10)} }, "at most"},
		{"size mismatch", func(m *Manifest) { m.Entries[1].Size = 4 }, "add up to 3"},
		{"cidv0 chunk", func(m *Manifest) { m.Entries[1].Chunks[0].CID = v0 }, "not CIDv1 raw"},
		{"zero chunk size", func(m *Manifest) { m.Entries[1].Chunks[0].Size = 0 }, "size 0"},
		{"dir with chunks", func(m *Manifest) { m.Entries[0].Chunks = m.Entries[1].Chunks }, "directory"},
		{"empty symlink", func(m *Manifest) { m.Entries[3].Target = "" }, "symlink target"},
		{"mode bits", func(m *Manifest) { m.Entries[0].Mode |= 1 << 31 }, "mode"},
		{"type", func(m *Manifest) { m.Entries[4].Type = 9 }, "unknown entry type"},
		{"params", func(m *Manifest) { m.Params.Avg = 3 }, "power of two"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := sampleManifest(t)
			tc.edit(m)
			_, _, err := m.Encode()
			if err == nil || !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want malformed with %q", err, tc.want)
			}
		})
	}
}

func TestDecodeRejectsNonCanonical(t *testing.T) {
	t.Parallel()
	b, _, _ := sampleManifest(t).Encode()
	for _, bad := range [][]byte{nil, {0xff}, b[:len(b)-1], append(append([]byte{}, b...), 0), []byte("not cbor at all")} {
		if _, err := DecodeManifest(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("%x: got %v", bad[:min(len(bad), 8)], err)
		}
	}
}

// TestChunkListEncoding: the hand-coded chunk list encodes exactly as the
// generic encoder encodes an array of [bytes, uint] pairs (what manifests
// were encoded with before it, so every layer keeps its id), at every
// head size, and decodes back.
func TestChunkListEncoding(t *testing.T) {
	t.Parallel()
	type pair struct {
		_    struct{} `cbor:",toarray"`
		CID  []byte
		Size uint32
	}
	for _, n := range []int{1, 23, 24, 255, 256, 1000} {
		refs := make(wireRefs, n)
		pairs := make([]pair, n)
		for i := range refs {
			id, _ := SumCID([]byte{byte(i), byte(i >> 8)}, SHA256)
			size := []uint32{1, 23, 24, 255, 256, 65535, 65536, 1<<32 - 1}[i%8]
			refs[i], pairs[i] = Ref{id, size}, pair{CID: id.Bytes(), Size: size}
		}
		got, err := encMode.Marshal(refs)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := encMode.Marshal(pairs)
		if !bytes.Equal(got, want) {
			t.Fatalf("%d refs: encoded differently from the generic encoder", n)
		}
		var back wireRefs
		if err := decMode.Unmarshal(got, &back); err != nil || !slices.Equal(back, refs) {
			t.Fatalf("%d refs: decoded %d, %v", n, len(back), err)
		}
	}
}

// TestChunkListRejects: a chunk list encoded any other way is refused,
// with what is wrong.
func TestChunkListRejects(t *testing.T) {
	t.Parallel()
	m := sampleManifest(t)
	b, _, _ := m.Encode()
	id := m.Entries[1].Chunks[0].CID.Bytes()
	at := bytes.Index(b, id) // the first chunk's id, after its head 0x58 len
	if at < 3 || b[at-3] != 0x82 || b[at-2] != 0x58 {
		t.Fatalf("sample's first chunk not found as expected")
	}
	edit := func(f func(c []byte) []byte) []byte { return f(bytes.Clone(b)) }
	for name, tc := range map[string]struct {
		data []byte
		want string
	}{
		"long id head":    {edit(func(c []byte) []byte { return slices.Insert(c, at-1, 0) }), ""},
		"not a pair":      {edit(func(c []byte) []byte { c[at-3] = 0xa1; return c }), "pair"},
		"id not bytes":    {edit(func(c []byte) []byte { c[at-2] = 0x78; return c }), "major type 3"},
		"id not a cid":    {edit(func(c []byte) []byte { c[at] = 0x7f; return c }), "chunk 0"},
		"size not a uint": {edit(func(c []byte) []byte { c[at+len(id)] = 0x21; return c }), "size"},
		"size over 32 bit": {edit(func(c []byte) []byte {
			return slices.Replace(c, at+len(id), at+len(id)+1, 0x1b, 1, 0, 0, 0, 0, 0, 0, 1)
		}), "32 bits"},
	} {
		if _, err := DecodeManifest(tc.data); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want malformed with %q", name, err, tc.want)
		}
	}
}

func TestParseName(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{"web": "web:latest", "web:2.1": "web:2.1", "org/base-os:24.04_1": "org/base-os:24.04_1",
		"127.0.0.1:5055/demo/app:2": "127.0.0.1:5055/demo/app:2", "registry.local:5000/app": "registry.local:5000/app:latest"} {
		n, err := ParseName(in)
		if err != nil || n.String() != want {
			t.Errorf("ParseName(%q) = %v, %v", in, n, err)
		}
	}
	for _, bad := range []string{"", "Web", "web:", "web:-x", "a//b", "-a", "a:b:c", "../x", strings.Repeat("a", 129),
		"host:port/app", "a:5000:1", "a/b:5000/c:1", ":5000/app", "127.0.0.1:5055/:2"} {
		if _, err := ParseName(bad); err == nil {
			t.Errorf("ParseName(%q) accepted", bad)
		}
	}
}

func FuzzDecodeManifest(f *testing.F) {
	b, _, _ := sampleManifest(f).Encode()
	f.Add(b)
	f.Add([]byte{0xa0})
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeManifest(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrBadCID) {
				t.Fatalf("error does not say malformed: %v", err)
			}
			return
		}
		again, _, err := m.Encode()
		if err != nil || string(again) != string(data) {
			t.Fatalf("accepted manifest does not re-encode to itself: %v", err)
		}
	})
}

// BenchmarkDecodeManifest decodes the manifest of a 1 GiB disk image in 64K
// chunks (16384 refs), as a fetcher does before it asks for chunks.
func BenchmarkDecodeManifest(b *testing.B) {
	refs := make([]Ref, 16384)
	for i := range refs {
		refs[i].CID, _ = SumCID([]byte{byte(i), byte(i >> 8)}, SHA256)
		refs[i].Size = 64 << 10
	}
	m := &Manifest{Params: DefaultParams(), Entries: []Entry{{Path: "disk.img", Type: File, Mode: 0o644, Size: 1 << 30, Chunks: refs}}}
	data, _, err := m.Encode()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := DecodeManifest(data); err != nil {
			b.Fatal(err)
		}
	}
}

// TestManifestClone: a clone shares nothing a caller can change.
func TestManifestClone(t *testing.T) {
	t.Parallel()
	m := sampleManifest(t)
	want, _, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	c := m.Clone()
	if got, _, _ := c.Encode(); string(got) != string(want) {
		t.Fatal("clone encodes differently")
	}
	c.Meta["product"] = "x"
	c.Entries[0].Path = "sbin"
	c.Entries[1].Chunks[0].Size = 9
	c.Entries[1].Xattrs["user.origin"][0] = 'B'
	c.Entries[1].Xattrs["user.new"] = nil
	if got, _, _ := m.Encode(); string(got) != string(want) {
		t.Fatal("changing the clone changed the manifest")
	}
}
