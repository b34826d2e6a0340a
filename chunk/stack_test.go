package chunk

import (
	"fmt"
	"io/fs"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/ipfs/go-cid"
)

func dir(p string) Entry { return Entry{Path: p, Type: Dir, Mode: 0o755} }

func file(p string, content string) Entry {
	id, _ := SumCID([]byte(content), SHA256)
	return Entry{Path: p, Type: File, Mode: 0o644, Size: int64(len(content)), Chunks: []Ref{{CID: id, Size: uint32(len(content))}}}
}

func paths(m *Manifest) []string {
	var out []string
	for _, e := range m.Entries {
		out = append(out, e.Path)
	}
	return out
}

func TestFlattenWhiteouts(t *testing.T) {
	t.Parallel()
	base := &Manifest{Params: DefaultParams(), Entries: []Entry{
		dir("etc"), file("etc/a", "1"), file("etc/b", "2"), dir("var"), dir("var/lib"), file("var/lib/x", "x"), file("var/y", "y"),
	}}
	upper := &Manifest{Params: DefaultParams(), Entries: []Entry{
		dir("etc"), file("etc/.wh.a", ""), file("etc/b", "changed"), file("etc/c", "3"),
		dir("var"), file("var/.wh..wh..opq", ""), file("var/z", "z"),
	}}
	got := Flatten([]*Manifest{base, upper})
	want := []string{"etc", "etc/b", "etc/c", "var", "var/z"}
	if !reflect.DeepEqual(paths(got), want) {
		t.Fatalf("flatten: %v, want %v", paths(got), want)
	}
	if got.Entries[1].Size != int64(len("changed")) {
		t.Fatal("upper file did not win")
	}
	if err := got.Validate(); err != nil {
		t.Fatal(err)
	}
}

// Random image pairs (shared, unique, modified and deleted files,
// symlinks, modes): split, then flatten each thin layer on the common one,
// gives back each image exactly.
func TestSplitCommonRoundTrip(t *testing.T) {
	t.Parallel()
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 3))
		var imgs []*Manifest
		for k := range 3 {
			m := &Manifest{Params: DefaultParams(), Entries: []Entry{dir("d"), dir("d/sub"), dir("u")}}
			for i := range 40 {
				p := fmt.Sprintf("d/f%02d", i)
				if i%3 == 0 {
					p = fmt.Sprintf("d/sub/f%02d", i)
				}
				switch x := r.IntN(10); {
				case x < 6: // shared
					m.Entries = append(m.Entries, file(p, "shared "+p))
				case x < 8: // modified in this image
					m.Entries = append(m.Entries, file(p, fmt.Sprintf("image %d %s", k, p)))
				case x < 9: // a symlink
					m.Entries = append(m.Entries, Entry{Path: p, Type: Symlink, Mode: 0o777 | fs.ModePerm, Target: "t"})
				default: // deleted here
				}
			}
			m.Entries = append(m.Entries, file(fmt.Sprintf("u/own%d", k), "own"))
			if k == 1 {
				m.Entries[0].Mode = 0o700 // a directory mode of its own
			}
			sortEntries(m)
			imgs = append(imgs, m)
		}
		common, thin := SplitCommon(imgs...)
		if err := common.Validate(); err != nil {
			t.Fatalf("seed %d: common: %v", seed, err)
		}
		for i, m := range imgs {
			if err := thin[i].Validate(); err != nil {
				t.Fatalf("seed %d: thin %d: %v", seed, i, err)
			}
			got := Flatten([]*Manifest{common, thin[i]})
			if !reflect.DeepEqual(got.Entries, m.Entries) {
				t.Fatalf("seed %d: image %d differs after split: %v vs %v", seed, i, paths(got), paths(m))
			}
		}
	}
}

func sortEntries(m *Manifest) {
	es := m.Entries
	for i := 1; i < len(es); i++ {
		for j := i; j > 0 && es[j].Path < es[j-1].Path; j-- {
			es[j], es[j-1] = es[j-1], es[j]
		}
	}
}

// Running split again after the same change reached every image folds the
// change into the new common layer.
func TestSplitAgainFoldsSharedChange(t *testing.T) {
	t.Parallel()
	a := &Manifest{Params: DefaultParams(), Entries: []Entry{dir("d"), file("d/lib", "lib"), file("d/own", "a")}}
	b := &Manifest{Params: DefaultParams(), Entries: []Entry{dir("d"), file("d/lib", "lib"), file("d/own", "b")}}
	common, thin := SplitCommon(a, b)
	patch := file("d/patch", "security fix")
	var again []*Manifest
	for _, t := range thin {
		t.Entries = append(t.Entries, patch) // the same commit applied to each
		sortEntries(t)
		again = append(again, Flatten([]*Manifest{common, t}))
	}
	common2, _ := SplitCommon(again...)
	if got := paths(common2); !reflect.DeepEqual(got, []string{"d", "d/lib", "d/patch"}) {
		t.Fatalf("second common layer: %v", got)
	}
}

// A hard link whose target an upper layer replaces or removes becomes a
// copy in the flattened tree (it still has its content); one whose target
// stays is kept.
func TestFlattenKeepsOnlyIntactLinks(t *testing.T) {
	t.Parallel()
	a, _ := SumCID([]byte("a"), SHA256)
	b, _ := SumCID([]byte("b"), SHA256)
	file := func(p, link string, id cid.Cid) Entry {
		return Entry{Path: p, Type: File, Mode: 0o644, Size: 1, Chunks: []Ref{{id, 1}}, Link: link}
	}
	base := &Manifest{Params: DefaultParams(), Entries: []Entry{file("a", "", a), file("b", "a", a), file("c", "", b), file("d", "c", b)}}
	upper := &Manifest{Params: DefaultParams(), Entries: []Entry{file("a", "", b), {Path: ".wh.c", Type: File, Mode: 0o644}}}
	flat := Flatten([]*Manifest{base, upper})
	if err := flat.Validate(); err != nil {
		t.Fatal(err)
	}
	links := map[string]string{}
	for _, e := range flat.Entries {
		links[e.Path] = e.Link
	}
	if links["b"] != "" || links["d"] != "" {
		t.Fatalf("links after the targets changed: %v", links)
	}
	if flat := Flatten([]*Manifest{base}); flat.Entries[1].Link != "a" {
		t.Fatalf("an intact link was dropped: %+v", flat.Entries[1])
	}
}

// SplitCommon keeps a hard link with its target: a link whose target
// differs between the layers stays in the thin layers with it.
func TestSplitCommonKeepsLinksTogether(t *testing.T) {
	t.Parallel()
	a, _ := SumCID([]byte("a"), SHA256)
	b, _ := SumCID([]byte("b"), SHA256)
	file := func(p, link string, id cid.Cid, mtime int64) Entry {
		return Entry{Path: p, Type: File, Mode: 0o644, Size: 1, Chunks: []Ref{{id, 1}}, Link: link, MTime: mtime}
	}
	// "t" is the same in both; "x" links to it only in the first
	m1 := &Manifest{Params: DefaultParams(), Entries: []Entry{file("t", "", a, 1), file("x", "t", a, 1)}}
	m2 := &Manifest{Params: DefaultParams(), Entries: []Entry{file("t", "", a, 1), file("x", "", b, 1)}}
	common, thin := SplitCommon(m1, m2)
	for _, m := range append([]*Manifest{common}, thin...) {
		if err := m.Validate(); err != nil {
			t.Fatalf("a split layer is invalid: %v", err)
		}
	}
	for i, m := range []*Manifest{m1, m2} {
		if got := Flatten([]*Manifest{common, thin[i]}); !reflect.DeepEqual(got.Entries, m.Entries) {
			t.Fatalf("layer %d does not flatten back: %+v", i, got.Entries)
		}
	}
}
