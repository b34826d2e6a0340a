package chunk

import (
	"bytes"
	"maps"
	"slices"

	"github.com/ipfs/go-cid"
)

// CommonReport says what several layers (images) share.
type CommonReport struct {
	Files      int       `json:"files"`       // regular files identical in every layer
	FileBytes  int64     `json:"file_bytes"`  // their size (counted once)
	Entries    int       `json:"entries"`     // identical entries of any type (dirs, symlinks, files)
	Share      []float64 `json:"share"`       // per layer: FileBytes / its total file bytes
	ChunkBytes int64     `json:"chunk_bytes"` // bytes of the distinct chunks every layer uses
	Sizes      []int64   `json:"sizes"`       // per layer: total file bytes
}

// sameEntry reports whether two entries are the same file, directory or
// symlink: type, mode, owner, size, target and content.
func sameEntry(a, b *Entry) bool {
	return a.Type == b.Type && a.Mode == b.Mode && a.UID == b.UID && a.GID == b.GID &&
		a.Size == b.Size && a.Target == b.Target && a.Link == b.Link &&
		maps.EqualFunc(a.Xattrs, b.Xattrs, bytes.Equal) &&
		slices.EqualFunc(a.Chunks, b.Chunks, func(x, y Ref) bool { return x.Size == y.Size && x.CID.Equals(y.CID) })
}

// Common compares layers: the entries identical (same path, same everything
// but mtime) in all of them, and the chunks all of them use.
func Common(ms ...*Manifest) CommonReport {
	r := CommonReport{Share: make([]float64, len(ms)), Sizes: make([]int64, len(ms))}
	if len(ms) == 0 {
		return r
	}
	byPath := make([]map[string]*Entry, len(ms))
	for i, m := range ms {
		byPath[i] = make(map[string]*Entry, len(m.Entries))
		for k := range m.Entries {
			byPath[i][m.Entries[k].Path] = &m.Entries[k]
		}
		r.Sizes[i] = m.Size()
	}
	for k := range ms[0].Entries {
		e := &ms[0].Entries[k]
		same := true
		for i := 1; i < len(ms) && same; i++ {
			o, ok := byPath[i][e.Path]
			same = ok && sameEntry(e, o)
		}
		if !same {
			continue
		}
		r.Entries++
		if e.Type == File {
			r.Files++
			r.FileBytes += e.Size
		}
	}
	for i := range ms {
		if r.Sizes[i] > 0 {
			r.Share[i] = float64(r.FileBytes) / float64(r.Sizes[i])
		}
	}
	// Chunk level: distinct chunks used by every layer.
	count := map[cid.Cid]int{}
	size := map[cid.Cid]uint32{}
	for _, m := range ms {
		for _, ref := range m.UniqueRefs() {
			count[ref.CID]++
			size[ref.CID] = ref.Size
		}
	}
	for id, n := range count {
		if n == len(ms) {
			r.ChunkBytes += int64(size[id])
		}
	}
	return r
}
