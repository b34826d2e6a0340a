package fuseview

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/p2pimg/p2pimg/chunk"
)

// openDisks opens the delta of every disk image of m (when the view has
// a DeltaDir). A hard link is another name of its target's node: one
// inode in the view (build), so one delta, whichever name is written.
func (v *View) openDisks(m *chunk.Manifest) error {
	if v.cfg.DeltaDir == "" {
		return nil
	}
	for i := range m.Entries {
		e := &m.Entries[i]
		if !isDisk(m, e, v.cfg.DiskMin) {
			continue
		}
		if e.Link != "" {
			// Validate puts the target first, and it has the same size.
			if d := v.disks[e.Link]; d != nil {
				d.names = append(d.names, e)
				v.disks[e.Path] = d
			}
			continue
		}
		d, err := newDiskNode(v, e)
		if err != nil {
			v.closeDisks()
			return err
		}
		v.disks[e.Path] = d
	}
	return nil
}

// closeDisks flushes and closes the deltas.
func (v *View) closeDisks() {
	for _, d := range v.diskNodes() {
		d.mu.Lock()
		if err := d.delta.Close(); err != nil {
			v.cfg.Log.Warn("fuse view: disk delta", "path", d.e.Path, "err", err)
		}
		d.mu.Unlock()
	}
}

// diskNodes lists the disk images once each (not once per name), in
// the order of their first names.
func (v *View) diskNodes() []*diskNode {
	var out []*diskNode
	for p, d := range v.disks {
		if p == d.e.Path {
			out = append(out, d)
		}
	}
	slices.SortFunc(out, func(a, b *diskNode) int { return strings.Compare(a.e.Path, b.e.Path) })
	return out
}

// Disks lists the paths (in the layer) of the writable disk images, every
// name of each.
func (v *View) Disks() []string {
	out := make([]string, 0, len(v.disks))
	for p := range v.disks {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// Changes counts the disk images written since they were last committed
// and the bytes their deltas hold.
func (v *View) Changes() (files int, bytes int64) {
	for _, d := range v.diskNodes() {
		d.mu.RLock()
		if d.delta.Changed() {
			files++
			bytes += d.delta.Blocks() * BlockSize
		}
		d.mu.RUnlock()
	}
	return files, bytes
}

// DeltaChanges is Changes for the deltas kept under dir (a view's
// DeltaDir) by a view that is not mounted now.
func DeltaChanges(dir string) (files int, bytes int64) {
	ents, _ := os.ReadDir(dir)
	for _, ent := range ents {
		var meta deltaMeta
		b, err := os.ReadFile(filepath.Join(dir, ent.Name(), "meta.json"))
		if err != nil || json.Unmarshal(b, &meta) != nil || meta.Gen == meta.Committed {
			continue
		}
		files++
		bm, _ := os.ReadFile(filepath.Join(dir, ent.Name(), "bitmap"))
		for _, c := range bm {
			bytes += int64(bits.OnesCount8(c)) * BlockSize
		}
	}
	return files, bytes
}

// Put stores verified chunks.
type Put func(ctx context.Context, blocks ...chunk.Block) error

// CommitDisks makes new entries (sorted by path) for every disk image
// written since it was last committed: the layer's chunks where no block
// of them changed, new chunks (stored with put) where one did, so only
// the changed parts are new. A disk image with hard links gets an entry
// for each name, the later ones links to the first with its chunks, so
// that every name keeps the new content and they stay one file. done
// records the disks as committed; call it once the entries are kept in a
// layer. Writes wait while the entries are made.
func (v *View) CommitDisks(ctx context.Context, p chunk.Params, put Put) (entries []chunk.Entry, done func() error, err error) {
	gens := map[*diskNode]uint64{}
	for _, d := range v.diskNodes() {
		d.mu.Lock()
		var e chunk.Entry
		changed := d.delta.Changed()
		if err = d.delta.Failed(); err != nil {
			err = fmt.Errorf("its delta cannot be trusted (%w); copy out what you need and deactivate with --discard-changes", err)
		} else if changed {
			e, err = d.commitEntry(ctx, p, put)
			gens[d] = d.delta.Gen()
		}
		d.mu.Unlock()
		if err != nil {
			return nil, nil, fmt.Errorf("commit %s: %w", d.e.Path, err)
		}
		if !changed {
			continue
		}
		entries = append(entries, e)
		for _, n := range d.names {
			l := *n
			l.Size, l.Chunks, l.MTime = e.Size, slices.Clone(e.Chunks), e.MTime
			entries = append(entries, l)
		}
	}
	slices.SortFunc(entries, func(a, b chunk.Entry) int { return strings.Compare(a.Path, b.Path) })
	done = func() error {
		var errs []error
		for d, gen := range gens {
			d.mu.Lock()
			if err := d.delta.MarkCommitted(gen); err != nil {
				d.flushFailed(err) // it flushes every handle's writes
				errs = append(errs, err)
			}
			d.mu.Unlock()
		}
		return errors.Join(errs...)
	}
	return entries, done, nil
}

// commitEntry is the disk's entry (its first name's) as it reads now,
// with the modification time the view shows. Hold d.mu.
func (d *diskNode) commitEntry(ctx context.Context, p chunk.Params, put Put) (chunk.Entry, error) {
	e := *d.e
	e.Chunks = nil
	e.MTime = d.mtime()
	size := d.delta.Size()
	e.Size = size
	keep := func(from, to int64) bool {
		if to > d.delta.BaseLimit() {
			return false
		}
		for b := from / BlockSize; b*BlockSize < to; b++ {
			if d.delta.Has(b) {
				return false
			}
		}
		return true
	}
	add := func(from, to int64) error {
		buf := make([]byte, to-from)
		if err := d.readMerged(ctx, buf, from); err != nil {
			return err
		}
		blk, err := chunk.Sum(buf, p.Hash)
		if err != nil {
			return err
		}
		if err := put(ctx, blk); err != nil {
			return err
		}
		e.Chunks = append(e.Chunks, chunk.Ref{CID: blk.CID(), Size: uint32(len(buf))})
		return nil
	}
	for i, ref := range d.e.Chunks {
		from, to := d.offs[i], min(d.offs[i+1], size)
		if from >= size {
			break
		}
		if to == d.offs[i+1] && keep(from, to) {
			e.Chunks = append(e.Chunks, ref)
			continue
		}
		if err := add(from, to); err != nil {
			return e, err
		}
	}
	step := int64(p.Avg) // the file grew: the new part in chunks of the average size
	for from := d.size(); from < size; from += step {
		if err := add(from, min(from+step, size)); err != nil {
			return e, err
		}
	}
	return e, nil
}
