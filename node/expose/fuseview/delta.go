package fuseview

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// BlockSize is the unit of a disk image's copy-on-write delta: a write
// touches whole blocks of the delta, never a whole-file copy.
const BlockSize = 4096

// bitmapPage is how much of the bitmap is written back at once.
const bitmapPage = 4096

// Delta is the block-level copy-on-write layer of one disk-image file: a
// sparse data file holding written blocks at their own offsets, a bitmap
// of the blocks it holds, and a small meta record (the base it applies
// to, the file's size and times, the write generation and the last
// committed one).
//
// Crash safety: the bitmap on disk never claims a block whose data was
// not written. A write goes to the data file and sets the block's bit in
// memory only; Flush syncs the data file first, then the meta record,
// then writes the changed bitmap pages and syncs them. A crash loses the
// writes since the last flush (as a disk does without a flush), never
// shows a block of garbage. Not safe for concurrent use: its file node
// serialises access.
type Delta struct {
	dir    string
	data   *os.File
	bits   *os.File
	bitmap []byte       // blocks held (written, maybe not flushed)
	pages  map[int]bool // bitmap pages changed since the last flush
	meta   deltaMeta
	dirty  bool // something to flush
	// failed is the first failed sync of the data or the bitmap. Linux
	// marks the pages of a failed writeback clean and reports the error
	// once, so a later sync can succeed over lost data: after one fails,
	// every flush fails (the bitmap on disk is never written again), and
	// the delta cannot be committed. Its last flushed state stays on disk.
	failed error
}

// deltaMeta is the delta's record (meta.json, replaced atomically).
type deltaMeta struct {
	Base      string `json:"base"`       // what it applies to: manifest id and path
	Size      int64  `json:"size"`       // the file's size now
	BaseLimit int64  `json:"base_limit"` // the base shows through only below this (after a shrink)
	Gen       uint64 `json:"gen"`        // changes (writes, resizes, times) so far
	Committed uint64 `json:"committed"`  // Gen when last committed
	// The file's times in nanoseconds since the epoch, 0 while never set
	// (the base's then, and for a delta kept by an older version). Here
	// rather than in the data file's own metadata: they are flushed with
	// the size and bitmap they go with, and a ctime can be kept at all.
	ATime int64 `json:"atime,omitempty"`
	MTime int64 `json:"mtime,omitempty"`
	CTime int64 `json:"ctime,omitempty"`
}

// OpenDelta opens (or makes) the delta in dir for a file of size bytes
// whose base is named base. A delta kept for another base (an older
// version of the layer) is discarded.
func OpenDelta(dir, base string, size int64) (*Delta, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("delta %s: %w", dir, err)
	}
	d := &Delta{dir: dir, pages: map[int]bool{}}
	b, err := os.ReadFile(filepath.Join(dir, "meta.json"))
	switch {
	case err == nil && json.Unmarshal(b, &d.meta) == nil && d.meta.Base == base && d.meta.Size >= 0 && d.meta.BaseLimit >= 0:
	case err == nil || errors.Is(err, os.ErrNotExist):
		for _, f := range []string{"data", "bitmap", "meta.json"} {
			os.Remove(filepath.Join(dir, f))
		}
		d.meta = deltaMeta{Base: base, Size: size, BaseLimit: size}
		// Not synced: if a crash loses a delta that holds nothing yet, the
		// next open makes it again.
		if err := d.writeMeta(false); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("delta %s: %w", dir, err)
	}
	if d.data, err = os.OpenFile(filepath.Join(dir, "data"), os.O_RDWR|os.O_CREATE, 0o600); err != nil {
		return nil, fmt.Errorf("delta %s: %w", dir, err)
	}
	if d.bits, err = os.OpenFile(filepath.Join(dir, "bitmap"), os.O_RDWR|os.O_CREATE, 0o600); err != nil {
		d.data.Close()
		return nil, fmt.Errorf("delta %s: %w", dir, err)
	}
	d.bitmap = make([]byte, bitmapLen(d.meta.Size))
	n, err := d.bits.ReadAt(d.bitmap, 0)
	if n < len(d.bitmap) {
		// A new bitmap (or one shorter than the file): the rest was never
		// written. Its space is taken now, so that a write later adds one
		// block of data to the delta and nothing else.
		clear(d.bitmap[n:])
		_, err = d.bits.WriteAt(d.bitmap[n:], int64(n)) // zeros: unsynced they read as zeros or not at all
	} else if errors.Is(err, io.EOF) {
		err = nil
	}
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("delta %s: bitmap: %w", dir, err)
	}
	return d, nil
}

func bitmapLen(size int64) int { return int((size+BlockSize-1)/BlockSize+7) / 8 }

// Size is the file's size now.
func (d *Delta) Size() int64 { return d.meta.Size }

// BaseLimit is the offset below which the base shows through.
func (d *Delta) BaseLimit() int64 { return d.meta.BaseLimit }

// Has reports whether the delta holds block b.
func (d *Delta) Has(b int64) bool {
	i := b / 8
	return i < int64(len(d.bitmap)) && d.bitmap[i]&(1<<(b%8)) != 0
}

// NextHeld is the first block at or after b that the delta holds, or -1.
func (d *Delta) NextHeld(b int64) int64 {
	for i := b / 8; i < int64(len(d.bitmap)); i++ {
		m := d.bitmap[i]
		if i == b/8 {
			m &^= byte(1<<(b%8)) - 1
		}
		if m != 0 {
			return i*8 + int64(bits.TrailingZeros8(m))
		}
	}
	return -1
}

func (d *Delta) set(b int64, on bool) {
	if on {
		d.bitmap[b/8] |= 1 << (b % 8)
	} else {
		d.bitmap[b/8] &^= 1 << (b % 8)
	}
	d.pages[int(b/8)/bitmapPage] = true
	d.dirty = true
}

// ReadAt reads delta bytes at off (the blocks must be held).
func (d *Delta) ReadAt(p []byte, off int64) error {
	n, err := d.data.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if !errors.Is(err, io.EOF) {
		return fmt.Errorf("delta %s: %w", d.dir, err)
	}
	clear(p[n:]) // held blocks past the data file's end were written as zeros
	return nil
}

// Write stores whole blocks starting at block first (len(p) a multiple
// of BlockSize) and marks them held.
func (d *Delta) Write(first int64, p []byte) error {
	if _, err := d.data.WriteAt(p, first*BlockSize); err != nil {
		return fmt.Errorf("delta %s: %w", d.dir, err)
	}
	for b := first; b < first+int64(len(p))/BlockSize; b++ {
		d.set(b, true)
	}
	d.meta.Gen++
	d.dirty = true
	return nil
}

// Zero makes blocks first..last-1 read as zeros: held, with a hole in
// the data file where they were (no disk for them), or zeros written
// where the file system cannot punch holes.
func (d *Delta) Zero(first, last int64) error {
	if last <= first {
		return nil
	}
	off, n := first*BlockSize, (last-first)*BlockSize
	if err := unix.Fallocate(int(d.data.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n); err != nil {
		zeros := make([]byte, min(n, 1<<20))
		for pos := off; pos < off+n; pos += int64(len(zeros)) {
			if _, err := d.data.WriteAt(zeros[:min(int64(len(zeros)), off+n-pos)], pos); err != nil {
				return fmt.Errorf("delta %s: %w", d.dir, err)
			}
		}
	}
	for b := first; b < last; b++ {
		d.set(b, true)
	}
	d.meta.Gen++
	d.dirty = true
	return nil
}

// Resize makes the file size bytes long. A shrink forgets the blocks past
// the end and hides the base from there on, so growing again shows zeros.
// The block holding the new end keeps its head; its tail is zeroed.
func (d *Delta) Resize(size int64) error {
	if size == d.meta.Size {
		return nil
	}
	if size < d.meta.Size {
		d.meta.BaseLimit = min(d.meta.BaseLimit, size)
		for b := (size + BlockSize - 1) / BlockSize; b*BlockSize < d.meta.Size; b++ {
			if d.Has(b) {
				d.set(b, false)
			}
		}
		if tail := size % BlockSize; tail != 0 && d.Has(size/BlockSize) {
			if _, err := d.data.WriteAt(make([]byte, BlockSize-tail), size); err != nil {
				return fmt.Errorf("delta %s: %w", d.dir, err)
			}
		}
	}
	if n := bitmapLen(size); n > len(d.bitmap) {
		d.bitmap = append(d.bitmap, make([]byte, n-len(d.bitmap))...)
	}
	d.meta.Size = size
	d.meta.Gen++
	d.dirty = true
	return nil
}

// Times are the file's access, modification and change times
// (nanoseconds since the epoch); 0 for one never set: the base's.
func (d *Delta) Times() (atime, mtime, ctime int64) {
	return d.meta.ATime, d.meta.MTime, d.meta.CTime
}

// SetTimes records the file's times, each unless 0. It is a change (to
// commit, and to flush) like a write.
func (d *Delta) SetTimes(atime, mtime, ctime int64) {
	if atime != 0 {
		d.meta.ATime = atime
	}
	if mtime != 0 {
		d.meta.MTime = mtime
	}
	if ctime != 0 {
		d.meta.CTime = ctime
	}
	d.meta.Gen++
	d.dirty = true
}

// Flush makes every earlier write durable: the data first, then the meta
// record, then the bitmap pages that changed.
func (d *Delta) Flush() error {
	if d.failed != nil {
		return d.failed
	}
	if !d.dirty {
		return nil
	}
	if err := d.data.Sync(); err != nil {
		d.failed = fmt.Errorf("delta %s: sync data failed, writes since the last flush may be lost: %w", d.dir, err)
		return d.failed
	}
	if err := d.writeMeta(true); err != nil {
		return err
	}
	for pg := range d.pages {
		from := pg * bitmapPage
		to := min(from+bitmapPage, len(d.bitmap))
		if from >= to {
			continue
		}
		if _, err := d.bits.WriteAt(d.bitmap[from:to], int64(from)); err != nil {
			d.failed = fmt.Errorf("delta %s: bitmap write failed, writes since the last flush may be lost: %w", d.dir, err)
			return d.failed
		}
	}
	if err := d.bits.Sync(); err != nil {
		d.failed = fmt.Errorf("delta %s: sync bitmap failed, writes since the last flush may be lost: %w", d.dir, err)
		return d.failed
	}
	clear(d.pages)
	d.dirty = false
	return nil
}

// writeMeta replaces meta.json atomically, and durably with sync.
func (d *Delta) writeMeta(sync bool) error {
	b, _ := json.Marshal(d.meta)
	tmp := filepath.Join(d.dir, "meta.json.tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err == nil {
		_, err = f.Write(b)
		if err == nil && sync {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(d.dir, "meta.json"))
	}
	if err == nil && sync {
		err = syncDir(d.dir)
	}
	if err != nil {
		return fmt.Errorf("delta %s: meta: %w", d.dir, err)
	}
	return nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// Blocks counts the blocks the delta holds.
func (d *Delta) Blocks() int64 {
	var n int
	for _, b := range d.bitmap {
		n += bits.OnesCount8(b)
	}
	return int64(n)
}

// Failed is the sync failure that broke the delta, or nil.
func (d *Delta) Failed() error { return d.failed }

// Changed reports whether the file was written since it was last
// committed (or since the base, if never).
func (d *Delta) Changed() bool { return d.meta.Gen != d.meta.Committed }

// Gen is the write generation now.
func (d *Delta) Gen() uint64 { return d.meta.Gen }

// MarkCommitted records that the content as of generation gen is kept as
// a layer, durably.
func (d *Delta) MarkCommitted(gen uint64) error {
	d.meta.Committed = gen
	d.dirty = true
	return d.Flush()
}

// Close flushes and closes the delta's files.
func (d *Delta) Close() error {
	err := d.Flush()
	d.data.Close()
	d.bits.Close()
	return err
}
