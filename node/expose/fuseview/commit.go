package fuseview

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/p2pimg/p2pimg/chunk"
)

// openDisks opens the delta of every disk image of m (when the view has
// a DeltaDir).
func (v *View) openDisks(m *chunk.Manifest) error {
	if v.cfg.DeltaDir == "" {
		return nil
	}
	for i := range m.Entries {
		e := &m.Entries[i]
		if !isDisk(m, e, v.cfg.DiskMin) {
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
	for p, d := range v.disks {
		d.mu.Lock()
		if err := d.delta.Close(); err != nil {
			v.cfg.Log.Warn("fuse view: disk delta", "path", p, "err", err)
		}
		d.mu.Unlock()
	}
}

// Disks lists the paths (in the layer) of the writable disk images.
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
	for _, d := range v.disks {
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

// CommitDisks makes a new entry for every disk image written since it was
// last committed: the layer's chunks where no block of them changed, new
// chunks (stored with put) where one did, so only the changed parts are
// new. done records the disks as committed; call it once the entries are
// kept in a layer. Writes wait while the entries are made.
func (v *View) CommitDisks(ctx context.Context, p chunk.Params, put Put) (entries []chunk.Entry, done func() error, err error) {
	gens := map[*diskNode]uint64{}
	for _, path := range v.Disks() {
		d := v.disks[path]
		d.mu.Lock()
		var e chunk.Entry
		changed := d.delta.Changed()
		if changed {
			e, err = d.commitEntry(ctx, p, put)
			gens[d] = d.delta.Gen()
		}
		d.mu.Unlock()
		if err != nil {
			return nil, nil, fmt.Errorf("commit %s: %w", path, err)
		}
		if changed {
			entries = append(entries, e)
		}
	}
	done = func() error {
		var errs []error
		for d, gen := range gens {
			d.mu.Lock()
			errs = append(errs, d.delta.MarkCommitted(gen))
			d.mu.Unlock()
		}
		return errors.Join(errs...)
	}
	return entries, done, nil
}

// commitEntry is the disk's entry as it reads now. Hold d.mu.
func (d *diskNode) commitEntry(ctx context.Context, p chunk.Params, put Put) (chunk.Entry, error) {
	e := *d.e
	e.Chunks, e.Link = nil, "" // new chunks: no longer another name of a file it was linked to
	e.MTime = time.Now().UnixNano()
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
