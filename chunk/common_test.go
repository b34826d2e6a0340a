package chunk

import (
	"math"
	"testing"
)

func TestCommon(t *testing.T) {
	t.Parallel()
	a1, _ := SumCID([]byte("a1"), SHA256)
	a2, _ := SumCID([]byte("a2"), SHA256)
	b, _ := SumCID([]byte("b"), SHA256)
	c, _ := SumCID([]byte("c"), SHA256)
	base := func() []Entry {
		return []Entry{
			{Path: "etc", Type: Dir, Mode: 0o755},
			{Path: "etc/os-release", Type: File, Mode: 0o644, Size: 300, Chunks: []Ref{{a1, 100}, {a2, 200}}},
			{Path: "lib", Type: Symlink, Mode: 0o777, Target: "usr/lib"},
		}
	}
	x := &Manifest{Params: DefaultParams(), Entries: append(base(),
		Entry{Path: "srv", Type: File, Mode: 0o644, Size: 100, Chunks: []Ref{{b, 100}}})}
	y := &Manifest{Params: DefaultParams(), Entries: append(base(),
		Entry{Path: "srv", Type: File, Mode: 0o600, Size: 100, Chunks: []Ref{{b, 100}}}, // mode differs
		Entry{Path: "var", Type: File, Mode: 0o644, Size: 700, Chunks: []Ref{{c, 700}}})}
	y.Entries[1].MTime = 12345 // times do not matter
	r := Common(x, y)
	if r.Entries != 3 || r.Files != 1 || r.FileBytes != 300 {
		t.Fatalf("common entries %d files %d bytes %d, want 3, 1, 300", r.Entries, r.Files, r.FileBytes)
	}
	if r.Sizes[0] != 400 || r.Sizes[1] != 1100 || math.Abs(r.Share[0]-0.75) > 1e-9 || math.Abs(r.Share[1]-300.0/1100) > 1e-9 {
		t.Fatalf("sizes %v share %v", r.Sizes, r.Share)
	}
	// srv's chunk b is shared at chunk level even though the files differ.
	if r.ChunkBytes != 400 {
		t.Fatalf("chunk-level shared bytes %d, want 400", r.ChunkBytes)
	}
	if r := Common(x, y, &Manifest{Params: DefaultParams()}); r.Files != 0 || r.ChunkBytes != 0 {
		t.Fatalf("with an empty third image: %+v", r)
	}
	if r := Common(x); r.Files != 2 || r.FileBytes != 400 || r.Share[0] != 1 {
		t.Fatalf("one image shares everything with itself: %+v", r)
	}
}
