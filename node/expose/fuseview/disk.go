package fuseview

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/p2pimg/p2pimg/chunk"
)

// diskNode is a disk-image file of the view: writable, its writes kept
// in a block-level Delta and its reads merging the delta over the layer.
// Its entry is the first of its names; names are the others (hard links,
// the same inode in the view), which a commit gives the same content.
type diskNode struct {
	fileNode
	names []*chunk.Entry
	mu    sync.RWMutex
	delta *Delta

	// Failed flushes, as Linux's errseq_t keeps them for a file: errGen
	// counts them and lastErr is the latest one's errno. Each handle
	// learns of a failure once, from its fsync (or close, if it wrote),
	// because a flush makes every handle's writes durable, or fails to.
	errGen  uint64
	lastErr syscall.Errno
}

// diskHandle is one open file of a disk image.
type diskHandle struct {
	seen  uint64 // the node's errGen when this handle last learned of a failure, or opened
	wrote bool   // it wrote or truncated: its close flushes and reports failures
}

var (
	_ fusefs.NodeWriter    = (*diskNode)(nil)
	_ fusefs.NodeSetattrer = (*diskNode)(nil)
	_ fusefs.NodeFsyncer   = (*diskNode)(nil)
	_ fusefs.NodeFlusher   = (*diskNode)(nil)
	_ fusefs.NodeAllocater = (*diskNode)(nil)
)

// maxDiskSize bounds how far a disk image may grow through the view (its
// delta's bitmap, held in memory, is then at most 32 MiB): a write or
// truncate past it fails with EFBIG.
const maxDiskSize = 1 << 40

// isDisk reports whether a file of the layer is served as a disk image:
// the layer's only file, or one of at least min bytes.
func isDisk(m *chunk.Manifest, e *chunk.Entry, minSize int64) bool {
	if e.Type != chunk.File {
		return false
	}
	if e.Size >= minSize {
		return true
	}
	for i := range m.Entries {
		if m.Entries[i].Type == chunk.File && &m.Entries[i] != e {
			return false
		}
	}
	return true
}

// HasDisks reports whether a view of m with DiskMin minSize (0: the
// default) serves any file as a writable disk image.
func HasDisks(m *chunk.Manifest, minSize int64) bool {
	if minSize <= 0 {
		minSize = defaultDiskMin
	}
	for i := range m.Entries {
		if isDisk(m, &m.Entries[i], minSize) {
			return true
		}
	}
	return false
}

// deltaDir is where the delta of path p lives under dir.
func deltaDir(dir, p string) string {
	return filepath.Join(dir, strings.ReplaceAll(p, "/", "%"))
}

func newDiskNode(v *View, e *chunk.Entry) (*diskNode, error) {
	d := &diskNode{fileNode: *newFileNode(v, e)}
	delta, err := OpenDelta(deltaDir(v.cfg.DeltaDir, e.Path), v.cfg.Base+"/"+e.Path, e.Size)
	if err != nil {
		return nil, err
	}
	d.delta = delta
	return d, nil
}

// Getattr shows the layer's attributes with the delta's size and times
// (the layer's times until the file is first written or touched).
func (d *diskNode) Getattr(ctx context.Context, fh fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.fileNode.Getattr(ctx, fh, out)
	d.mu.RLock()
	out.Size = uint64(d.delta.Size())
	out.Blocks += uint64(d.delta.Blocks() * (BlockSize / 512))
	atime, mtime, ctime := d.delta.Times()
	d.mu.RUnlock()
	setTime(atime, &out.Atime, &out.Atimensec)
	setTime(mtime, &out.Mtime, &out.Mtimensec)
	setTime(ctime, &out.Ctime, &out.Ctimensec)
	out.SetTimeout(0) // size, blocks and times change with writes
	return 0
}

// setTime sets an attribute's time to ns (nanoseconds since the epoch)
// unless ns is 0 (never set: the layer's stays).
func setTime(ns int64, sec *uint64, nsec *uint32) {
	if ns != 0 {
		t := time.Unix(0, ns)
		*sec, *nsec = uint64(t.Unix()), uint32(t.Nanosecond())
	}
}

// mtime is the modification time the view shows. Hold d.mu.
func (d *diskNode) mtime() int64 {
	if _, m, _ := d.delta.Times(); m != 0 {
		return m
	}
	return d.e.MTime
}

// Open allows writing; the kernel's cache stays valid across opens since
// every write comes through this file system. The handle tells its close
// and fsync which flush failures are its to hear of.
func (d *diskNode) Open(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return &diskHandle{seen: d.errGen}, fuse.FOPEN_KEEP_CACHE, 0
}

func (d *diskNode) Read(ctx context.Context, fh fusefs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	end := min(off+int64(len(dest)), d.delta.Size())
	if off >= end {
		return fuse.ReadResultData(nil), 0
	}
	if err := d.readMerged(ctx, dest[:end-off], off); err != nil {
		return nil, syscall.EIO
	}
	return fuse.ReadResultData(dest[:end-off]), 0
}

// readMerged fills dest with the file's bytes at off: held blocks from
// the delta, the rest from the layer. Hold d.mu.
func (d *diskNode) readMerged(ctx context.Context, dest []byte, off int64) error {
	end := off + int64(len(dest))
	for pos := off; pos < end; {
		b := pos / BlockSize
		if d.delta.Has(b) {
			to := min(end, (b+1)*BlockSize)
			if err := d.delta.ReadAt(dest[pos-off:to-off], pos); err != nil {
				return err
			}
			pos = to
			continue
		}
		to := pos
		for to < end && !d.delta.Has(to/BlockSize) {
			to = min(end, (to/BlockSize+1)*BlockSize)
		}
		if err := d.readBase(ctx, dest[pos-off:to-off], pos, d.delta.BaseLimit()); err != nil {
			return err
		}
		pos = to
	}
	return nil
}

// Write puts whole blocks into the delta: a write that covers part of a
// block first reads the rest of it (from the delta or the layer).
func (d *diskNode) Write(ctx context.Context, fh fusefs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	d.mu.Lock()
	defer d.mu.Unlock()
	end := off + int64(len(data))
	if off < 0 || end > max(maxDiskSize, d.size()) {
		return 0, syscall.EFBIG
	}
	if h, ok := fh.(*diskHandle); ok {
		h.wrote = true // even if it fails: a resize may have happened
	}
	if end > d.delta.Size() {
		if err := d.delta.Resize(end); err != nil {
			return 0, d.fail("write", err)
		}
	}
	first, last := off/BlockSize, (end+BlockSize-1)/BlockSize
	buf := make([]byte, (last-first)*BlockSize)
	start := first * BlockSize
	if off != start {
		if err := d.readMerged(ctx, buf[:BlockSize], start); err != nil {
			return 0, d.fail("write", err)
		}
	}
	if tail := last*BlockSize - BlockSize; end != last*BlockSize && (tail != start || off == start) {
		if err := d.readMerged(ctx, buf[tail-start:], tail); err != nil {
			return 0, d.fail("write", err)
		}
	}
	copy(buf[off-start:], data)
	if !d.v.space.allow(int64(len(buf))) {
		d.v.cfg.Log.Debug("fuse view: disk image write refused: the data directory's disk is down to its reserve", "path", d.e.Path, "reserve", d.v.cfg.Reserve)
		return 0, syscall.ENOSPC
	}
	if err := d.delta.Write(first, buf); err != nil {
		return 0, d.fail("write", err)
	}
	now := time.Now().UnixNano()
	d.delta.SetTimes(0, now, now)
	return uint32(len(data)), 0
}

// Allocate answers fallocate(2) for what a guest's disk asks of its
// image: a discard (punch hole, keeping the size) and write-zeroes (zero
// range) make the range read as zeros, whole blocks as holes in the delta
// (a discard gives its disk back), partial ones written; a zero range
// without KEEP_SIZE may grow the file. Reserving space (mode 0, or
// KEEP_SIZE alone) is not supported: the delta holds only what is written,
// and claiming the reservation would be a lie (EOPNOTSUPP; callers fall
// back to writing).
func (d *diskNode) Allocate(ctx context.Context, fh fusefs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	const punch = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
	keep := mode&unix.FALLOC_FL_KEEP_SIZE != 0
	switch mode {
	case punch, unix.FALLOC_FL_ZERO_RANGE, unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE:
	default:
		return syscall.EOPNOTSUPP
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	start, end := int64(off), int64(off)+int64(size)
	if start < 0 || end < start || end > max(maxDiskSize, d.size()) {
		return syscall.EFBIG
	}
	if h, ok := fh.(*diskHandle); ok {
		h.wrote = true
	}
	if !keep && end > d.delta.Size() {
		if err := d.delta.Resize(end); err != nil {
			return d.fail("fallocate", err)
		}
	}
	end = min(end, d.delta.Size())
	if start >= end {
		return 0
	}
	first, last := (start+BlockSize-1)/BlockSize, end/BlockSize // the whole blocks
	// Only the first and the last block can be partly covered.
	for i, b := range []int64{start / BlockSize, (end - 1) / BlockSize} {
		lo, hi := max(start, b*BlockSize), min(end, (b+1)*BlockSize)
		if (i == 1 && b == start/BlockSize) || hi-lo == BlockSize {
			continue
		}
		if errno := d.zeroPart(ctx, lo, hi); errno != 0 {
			return errno
		}
	}
	if first < last {
		if err := d.delta.Zero(first, last); err != nil {
			return d.fail("fallocate", err)
		}
	}
	now := time.Now().UnixNano()
	d.delta.SetTimes(0, now, now)
	return 0
}

// zeroPart writes zeros over [from, to), which lies within one block.
// Hold d.mu.
func (d *diskNode) zeroPart(ctx context.Context, from, to int64) syscall.Errno {
	b := from / BlockSize
	buf := make([]byte, BlockSize)
	if err := d.readMerged(ctx, buf, b*BlockSize); err != nil {
		return d.fail("fallocate", err)
	}
	clear(buf[from-b*BlockSize : to-b*BlockSize])
	if err := d.delta.Write(b, buf); err != nil {
		return d.fail("fallocate", err)
	}
	return 0
}

// fail logs a failure of the delta and gives the errno to report: the
// real one where the writer can act on it (qemu's werror=enospc pauses
// the guest on ENOSPC, and resumes it once space is freed), EIO otherwise.
func (d *diskNode) fail(op string, err error) syscall.Errno {
	d.v.cfg.Log.Warn("fuse view: disk "+op+" failed", "path", d.e.Path, "err", err)
	for _, e := range []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG, syscall.EROFS} {
		if errors.Is(err, e) {
			return e
		}
	}
	return syscall.EIO
}

// Setattr changes the size (truncate) and the times, which it keeps in
// the delta (durably at once: nothing else may flush them soon); modes
// and owners cannot change.
func (d *diskNode) Setattr(ctx context.Context, fh fusefs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if _, ok := in.GetMode(); ok {
		return syscall.EPERM
	}
	if _, ok := in.GetUID(); ok {
		return syscall.EPERM
	}
	if _, ok := in.GetGID(); ok {
		return syscall.EPERM
	}
	if errno := d.setattr(fh, in); errno != 0 {
		return errno
	}
	return d.Getattr(ctx, fh, out)
}

func (d *diskNode) setattr(fh fusefs.FileHandle, in *fuse.SetAttrIn) syscall.Errno {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now().UnixNano()
	if size, ok := in.GetSize(); ok {
		if size > uint64(max(maxDiskSize, d.size())) {
			return syscall.EFBIG
		}
		if h, ok := fh.(*diskHandle); ok {
			h.wrote = true // ftruncate: its close makes it durable
		}
		if err := d.delta.Resize(int64(size)); err != nil {
			return d.fail("truncate", err)
		}
		d.delta.SetTimes(0, now, now) // as truncate(2) does, whatever the size was
	}
	atime, setA := in.GetATime()
	mtime, setM := in.GetMTime()
	if !setA && !setM {
		return 0
	}
	var a, m int64
	if setA {
		a = atime.UnixNano()
	}
	if setM {
		m = mtime.UnixNano()
	}
	d.delta.SetTimes(a, m, now)
	if err := d.delta.Flush(); err != nil {
		return d.flushFailed(err)
	}
	return 0
}

// Fsync makes the file's writes so far durable, whoever made them, and
// reports a failure to make them so since the handle last learned of
// one: a failed flush may have lost this handle's writes even if this
// one succeeds.
func (d *diskNode) Fsync(ctx context.Context, fh fusefs.FileHandle, flags uint32) syscall.Errno {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.sync(fh)
}

// Flush (every close) of a handle that wrote is its Fsync, so a writer
// that never calls fsync still learns at close that its writes may be
// lost. A handle that did not write has nothing to make durable and
// no failure to hear of: another writer's is that writer's to report.
func (d *diskNode) Flush(ctx context.Context, fh fusefs.FileHandle) syscall.Errno {
	d.mu.Lock()
	defer d.mu.Unlock()
	if h, ok := fh.(*diskHandle); ok && !h.wrote {
		return 0
	}
	return d.sync(fh)
}

// sync flushes the delta and reports what handle fh has not yet learned
// of. Hold d.mu.
func (d *diskNode) sync(fh fusefs.FileHandle) syscall.Errno {
	var errno syscall.Errno
	if err := d.delta.Flush(); err != nil {
		errno = d.flushFailed(err)
	}
	h, ok := fh.(*diskHandle)
	if !ok {
		return errno
	}
	if h.seen != d.errGen {
		h.seen = d.errGen
		return d.lastErr
	}
	return 0
}

// flushFailed records a failed flush of the delta for every handle open
// now, and gives its errno. Hold d.mu.
func (d *diskNode) flushFailed(err error) syscall.Errno {
	d.lastErr = d.fail("flush", err)
	d.errGen++
	return d.lastErr
}

// Lseek answers SEEK_DATA and SEEK_HOLE: a block of the delta is data,
// and so is a non-zero chunk of the layer where the layer shows through.
func (d *diskNode) Lseek(ctx context.Context, fh fusefs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	const seekData, seekHole = 3, 4
	d.mu.RLock()
	defer d.mu.RUnlock()
	size, pos := d.delta.Size(), int64(off)
	if pos >= size {
		return 0, syscall.ENXIO
	}
	switch whence {
	case seekData:
		for pos < size {
			if d.isData(pos) {
				return uint64(pos), 0
			}
			pos = d.nextChange(pos)
		}
		return 0, syscall.ENXIO
	case seekHole:
		for pos < size && d.isData(pos) {
			if d.delta.Has(pos / BlockSize) {
				pos = (pos/BlockSize + 1) * BlockSize
			} else {
				pos = d.offs[d.chunkAt(pos)+1]
			}
		}
		return uint64(min(pos, size)), 0
	}
	return 0, syscall.EINVAL
}

// isData reports whether byte pos may hold data.
func (d *diskNode) isData(pos int64) bool {
	if d.delta.Has(pos / BlockSize) {
		return true
	}
	return pos < d.delta.BaseLimit() && pos < d.size() && !d.zero[d.chunkAt(pos)]
}

// nextChange is the next offset after pos (not data) where data may
// start: the next held block or the next chunk of the layer.
func (d *diskNode) nextChange(pos int64) int64 {
	next := d.delta.Size()
	if b := d.delta.NextHeld(pos / BlockSize); b >= 0 {
		next = min(next, max(b*BlockSize, pos+1))
	}
	if pos < d.size() {
		next = min(next, d.offs[d.chunkAt(pos)+1])
	}
	return next
}
