package chunk

import (
	"path"
	"slices"
	"sort"
	"strings"
)

// Whiteouts follow the OCI image layer conventions: in a layer stacked on
// others, an empty file named .wh.NAME deletes NAME (and everything under
// it) from the layers below, and .wh..wh..opq in a directory hides
// everything the layers below have in that directory.
const (
	WhiteoutPrefix = ".wh."
	OpaqueMarker   = ".wh..wh..opq"
)

// IsWhiteout reports whether a layer path is a whiteout or opaque marker.
func IsWhiteout(p string) bool { return strings.HasPrefix(path.Base(p), WhiteoutPrefix) }

// Whiteout reads a whiteout entry: the path it deletes from the layers
// below, and whether it is an opaque marker (which deletes everything under
// target, not target itself). ok is false for any other path.
func Whiteout(p string) (target string, opaque, ok bool) {
	base, dir := path.Base(p), path.Dir(p)
	switch {
	case base == OpaqueMarker:
		return dir, true, true
	case strings.HasPrefix(base, WhiteoutPrefix):
		return path.Join(dir, strings.TrimPrefix(base, WhiteoutPrefix)), false, true
	}
	return p, false, false
}

// Flatten composes a stack of layers, base first, into the one tree it
// represents: upper entries win, whiteouts delete from the layers below
// and are not part of the result. The result has the top layer's
// parameters and no parent; it is for checkout, not for storing.
func Flatten(stack []*Manifest) *Manifest {
	if len(stack) == 0 {
		return &Manifest{}
	}
	tree := map[string]Entry{}
	for _, m := range stack {
		for _, e := range m.Entries {
			if target, opaque, ok := Whiteout(e.Path); ok {
				removeUnder(tree, target, !opaque)
			}
		}
		for _, e := range m.Entries {
			if IsWhiteout(e.Path) {
				continue
			}
			if old, ok := tree[e.Path]; ok && old.Type == Dir && e.Type != Dir {
				removeUnder(tree, e.Path, false) // a file replaces a directory
			}
			tree[e.Path] = e
		}
	}
	top := stack[len(stack)-1]
	out := &Manifest{Params: top.Params, Meta: top.Meta, Entries: make([]Entry, 0, len(tree))}
	for _, e := range tree {
		if t, ok := tree[e.Link]; e.Link != "" && (!ok || t.Type != File || t.Link != "" || !slices.Equal(t.Chunks, e.Chunks)) {
			e.Link = "" // its target was removed or replaced above it: a copy now
		}
		out.Entries = append(out.Entries, e)
	}
	sort.Slice(out.Entries, func(i, j int) bool { return out.Entries[i].Path < out.Entries[j].Path })
	return out
}

// removeUnder deletes everything below p, and p itself when self is set.
func removeUnder(tree map[string]Entry, p string, self bool) {
	if self {
		delete(tree, p)
	}
	prefix := p + "/"
	if p == "." {
		prefix = ""
	}
	for k := range tree {
		if strings.HasPrefix(k, prefix) {
			delete(tree, k)
		}
	}
}

// SplitCommon splits layers (flattened trees) into a common layer that
// holds the files and symlinks identical in all of them (mtime included)
// with their directories, and one thin layer per input holding everything
// else of it: its own files and all its directories, so its directory
// metadata wins. Flatten(common, thin[i]) is input i exactly. The caller
// sets each thin layer's Parent to the common layer's id.
func SplitCommon(ms ...*Manifest) (common *Manifest, thin []*Manifest) {
	common = &Manifest{}
	if len(ms) == 0 {
		return common, nil
	}
	common.Params = ms[0].Params
	byPath := make([]map[string]*Entry, len(ms))
	for i, m := range ms {
		byPath[i] = make(map[string]*Entry, len(m.Entries))
		for k := range m.Entries {
			byPath[i][m.Entries[k].Path] = &m.Entries[k]
		}
	}
	shared := map[string]bool{}
	dirs := map[string]bool{}
	for k := range ms[0].Entries {
		e := &ms[0].Entries[k]
		if e.Type == Dir {
			continue
		}
		same := true
		for i := 1; i < len(ms) && same; i++ {
			o, ok := byPath[i][e.Path]
			same = ok && sameEntry(e, o) && e.MTime == o.MTime
		}
		if same {
			shared[e.Path] = true
			for d := path.Dir(e.Path); d != "."; d = path.Dir(d) {
				dirs[d] = true
			}
		}
	}
	unshareLinks(ms, shared)
	for _, e := range ms[0].Entries {
		if shared[e.Path] || (e.Type == Dir && dirs[e.Path]) {
			common.Entries = append(common.Entries, e)
		}
	}
	for _, m := range ms {
		t := &Manifest{Params: m.Params, Meta: m.Meta}
		for _, e := range m.Entries {
			if !shared[e.Path] {
				t.Entries = append(t.Entries, e)
			}
		}
		thin = append(thin, t)
	}
	return common, thin
}

// unshareLinks keeps every hard link in the same layer as its target:
// where one of the two stays in a thin layer, both do.
func unshareLinks(ms []*Manifest, shared map[string]bool) {
	for changed := true; changed; {
		changed = false
		for _, m := range ms {
			for _, e := range m.Entries {
				if e.Link != "" && shared[e.Path] != shared[e.Link] {
					delete(shared, e.Path)
					delete(shared, e.Link)
					changed = true
				}
			}
		}
	}
}

// Conflicts lists the paths a thin layer changes (its files, symlinks and
// whiteouts) that also differ between its old base and a new one (both
// flattened): rebasing the layer would silently override or lose one of
// the two changes.
func Conflicts(thin, oldBase, newBase *Manifest) []string {
	changed := map[string]bool{}
	oldBy := map[string]*Entry{}
	for i := range oldBase.Entries {
		oldBy[oldBase.Entries[i].Path] = &oldBase.Entries[i]
	}
	seen := map[string]bool{}
	for i := range newBase.Entries {
		e := &newBase.Entries[i]
		seen[e.Path] = true
		if o, ok := oldBy[e.Path]; !ok || !sameEntry(o, e) || o.MTime != e.MTime {
			if e.Type != Dir || !ok {
				changed[e.Path] = true
			}
		}
	}
	for p, e := range oldBy {
		if !seen[p] && e.Type != Dir {
			changed[p] = true
		}
	}
	var out []string
	for _, e := range thin.Entries {
		if e.Type == Dir {
			continue
		}
		p, under := e.Path, false
		if target, _, ok := Whiteout(e.Path); ok {
			p, under = target, true
		}
		for c := range changed {
			if c == p || (under && strings.HasPrefix(c, p+"/")) {
				out = append(out, c)
			}
		}
	}
	sort.Strings(out)
	return slices.Compact(out)
}
