package badgerstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/ipfs/go-cid"
	"golang.org/x/sys/unix"

	"github.com/p2pimg/p2pimg/chunk"
)

// Chunk bytes live in append-only pack files; badger indexes them. Badger v4
// memory-maps its value log, so keeping chunks there put every byte written
// into the daemon's resident set (measured: 800 MiB RSS to add a 1 GiB
// image); packs are written with write(2) and read with pread(2) and keep the
// daemon's memory flat whatever the store's size.
//
// A pack record is: cid length (1 byte), cid, data length (4 bytes, big
// endian), data. The records make a pack self-describing, so an index could
// be rebuilt from packs alone, up to the first range gc punched out (see
// Compact: it reads as zeros).

// loc is where a chunk's data is: pack number, offset of the data, length,
// and a CRC-32C of the data. Every read checks the CRC (hardware, many GB/s),
// so bytes that rotted on disk are never returned, without paying a full
// re-hash on every chunk served.
type loc struct {
	pack uint32
	off  int64
	n    uint32
	crc  uint32
}

func (l loc) encode() []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint32(b[0:], l.pack)
	binary.BigEndian.PutUint64(b[4:], uint64(l.off))
	binary.BigEndian.PutUint32(b[12:], l.n)
	binary.BigEndian.PutUint32(b[16:], l.crc)
	return b
}

func decodeLoc(b []byte) (loc, error) {
	if len(b) != 20 {
		return loc{}, fmt.Errorf("chunk index entry of %d bytes, want 20", len(b))
	}
	return loc{binary.BigEndian.Uint32(b[0:]), int64(binary.BigEndian.Uint64(b[4:])), binary.BigEndian.Uint32(b[12:]), binary.BigEndian.Uint32(b[16:])}, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// packs manages the pack files of one store.
type packs struct {
	dir    string
	target int64 // start a new pack past this size

	mu     sync.RWMutex
	files  map[uint32]*os.File // every pack, open for reading (and the active one for writing)
	active uint32
	size   int64           // of the active pack
	dirty  map[uint32]bool // written since the last sync

	// uncached is, per pack, the span appended with uncached set whose
	// pages have not been dropped from the page cache yet; a sync drops
	// what it made durable (only clean pages can be dropped).
	uncached map[uint32]span

	// A pack that fills up is synced in the background while writing goes
	// on in the next one, and so is the active pack every syncEvery bytes;
	// sync waits for those before it returns.
	bg        sync.WaitGroup
	bgErr     error // guarded by mu
	unsynced  int64 // bytes appended to the active pack since its last background sync
	wbFrom    int64 // where in the active pack writeback has not been started yet
	bgSyncing bool  // a background sync of the active pack is running
}

// syncEvery is how much an append may leave unsynced in the active pack
// before a background sync starts. The final sync of a fetch or an add then
// has at most about this much left to flush: on a VM whose disk caches
// writes in the hypervisor, flushing 256 MiB at the end took 90 ms.
const syncEvery = 64 << 20

// writebackEvery is how much an append leaves written but not yet on its
// way to the disk before it starts the writeback.
const writebackEvery = 8 << 20

// keepCached is how much of the newest uncached data a background sync
// leaves in the page cache: hosts fetching a layer at the same time ask
// each other for the chunks they got last, and those are served from
// memory. Sync drops the rest.
const keepCached = 64 << 20

func openPacks(dir string, target int64) (*packs, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	p := &packs{dir: dir, target: target, files: map[uint32]*os.File{}, dirty: map[uint32]bool{}, uncached: map[uint32]span{}}
	var nums []uint32
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".pack")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(name, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("pack directory %s: unexpected file %s", dir, e.Name())
		}
		nums = append(nums, uint32(n))
	}
	slices.Sort(nums)
	for _, n := range nums {
		f, err := os.OpenFile(p.path(n), os.O_RDWR, 0)
		if err != nil {
			p.close()
			return nil, err
		}
		p.files[n] = f
	}
	if len(nums) == 0 {
		return p, p.rotate(1)
	}
	p.active = nums[len(nums)-1]
	fi, err := p.files[p.active].Stat()
	if err != nil {
		p.close()
		return nil, err
	}
	// A torn record at the end (a crash mid-write) is never indexed: new
	// records simply follow it.
	p.size = fi.Size()
	return p, nil
}

func (p *packs) path(n uint32) string { return filepath.Join(p.dir, fmt.Sprintf("%08d.pack", n)) }

// rotate starts pack n as the active one. Callers hold mu (or own p alone).
func (p *packs) rotate(n uint32) error {
	f, err := os.OpenFile(p.path(n), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("new pack: %w", err)
	}
	p.files[n], p.active, p.size, p.unsynced, p.wbFrom = f, n, 0, 0, 0
	return nil
}

type record struct {
	id   cid.Cid
	data []byte
}

// span is a byte range [lo, hi) of a pack.
type span struct{ lo, hi int64 }

// dropSynced drops pack n's uncached pages below upto, which a sync has
// just made durable, from the page cache. Callers hold mu.
func (p *packs) dropSynced(n uint32, upto int64) {
	s, ok := p.uncached[n]
	if !ok || upto <= s.lo {
		return
	}
	hi := min(s.hi, upto)
	if hi == s.hi {
		delete(p.uncached, n)
	} else {
		p.uncached[n] = span{hi, s.hi}
	}
	if f := p.files[n]; f != nil {
		// Advice only: pages still dirty (written after the sync began)
		// stay, and a failure costs memory, never data.
		unix.Fadvise(int(f.Fd()), s.lo, hi-s.lo, unix.FADV_DONTNEED)
	}
}

// append writes records to the active pack and returns where each one's
// data is; with uncached set, their pages leave the page cache once synced.
// On error nothing it wrote stays (the pack is cut back), so a full disk
// leaves no half-written record.
func (p *packs) append(recs []record, uncached bool) ([]loc, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.size >= p.target {
		full, fullSize := p.active, p.size
		if err := p.rotate(p.active + 1); err != nil {
			return nil, err
		}
		if p.dirty[full] {
			delete(p.dirty, full)
			f := p.files[full]
			p.bg.Go(func() {
				err := unix.Fdatasync(int(f.Fd()))
				p.mu.Lock()
				defer p.mu.Unlock()
				if err != nil {
					p.dirty[full], p.bgErr = true, fmt.Errorf("sync pack %d: %w", full, err)
					return
				}
				p.dropSynced(full, fullSize-keepCached)
			})
		}
	}
	for _, r := range recs {
		if n := r.id.ByteLen(); n > 64 {
			return nil, fmt.Errorf("chunk id %s is %d bytes, at most 64", r.id, n)
		}
	}
	f := p.files[p.active]
	start := p.size
	locs := make([]loc, len(recs))
	iov := make([][]byte, 0, 2*len(recs))
	hdrs := make([]byte, 0, len(recs)*(1+64+4)) // never reallocated: ids are at most 64 bytes
	off := start
	for i, r := range recs {
		h := len(hdrs)
		idb := r.id.Bytes()
		hdrs = append(hdrs, byte(len(idb)))
		hdrs = append(hdrs, idb...)
		hdrs = binary.BigEndian.AppendUint32(hdrs, uint32(len(r.data)))
		off += int64(len(hdrs) - h)
		iov = append(iov, hdrs[h:], r.data)
		locs[i] = loc{p.active, off, uint32(len(r.data)), crc32.Checksum(r.data, castagnoli)}
		off += int64(len(r.data))
	}
	// Headers and chunk data go to the kernel straight from where they are.
	if err := pwritevAll(f, iov, start); err != nil {
		f.Truncate(start)
		return nil, fmt.Errorf("write pack %d: %w", p.active, err)
	}
	p.size = off
	p.dirty[p.active] = true
	if uncached {
		s, ok := p.uncached[p.active]
		if !ok {
			s.lo = start
		}
		s.lo, s.hi = min(s.lo, start), max(s.hi, off)
		p.uncached[p.active] = s
	}
	if p.unsynced += off - start; p.unsynced >= syncEvery && !p.bgSyncing {
		p.unsynced, p.bgSyncing = 0, true
		n := p.active
		p.bg.Go(func() {
			err := unix.Fdatasync(int(f.Fd()))
			p.mu.Lock()
			defer p.mu.Unlock()
			p.bgSyncing = false
			if err != nil {
				p.bgErr = fmt.Errorf("sync pack %d: %w", n, err)
				return
			}
			p.dropSynced(n, off-keepCached)
		})
	}
	// Start writing back now, without waiting, so the sync that makes a
	// layer complete has less left to do: every writebackEvery bytes, not
	// on every append (a slow fetch appends a chunk or two at a time, and
	// each call blocks its thread).
	if off-p.wbFrom >= writebackEvery {
		unix.SyncFileRange(int(f.Fd()), p.wbFrom, off-p.wbFrom, unix.SYNC_FILE_RANGE_WRITE)
		p.wbFrom = off
	}
	return locs, nil
}

// pwritevAll writes every buffer at off, in order, resuming after short writes.
func pwritevAll(f *os.File, iov [][]byte, off int64) error {
	const iovMax = 1024
	fd := int(f.Fd())
	for len(iov) > 0 {
		batch := iov[:min(len(iov), iovMax)]
		n, err := unix.Pwritev(fd, batch, off)
		if err != nil {
			return err
		}
		off += int64(n)
		for n > 0 && len(iov) > 0 {
			if n >= len(iov[0]) {
				n -= len(iov[0])
				iov = iov[1:]
			} else {
				iov[0] = iov[0][n:]
				n = 0
			}
		}
		for len(iov) > 0 && len(iov[0]) == 0 {
			iov = iov[1:]
		}
	}
	return nil
}

// read returns a chunk's data. Bytes that fail their CRC come back with an
// error wrapping chunk.ErrCorrupt.
func (p *packs) read(l loc, buf []byte) ([]byte, error) {
	p.mu.RLock()
	f := p.files[l.pack]
	p.mu.RUnlock()
	if f == nil {
		return nil, fmt.Errorf("pack %d is missing", l.pack)
	}
	if cap(buf) < int(l.n) {
		buf = make([]byte, l.n)
	}
	buf = buf[:l.n]
	if _, err := f.ReadAt(buf, l.off); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("read pack %d at %d: %w", l.pack, l.off, err)
	}
	if crc32.Checksum(buf, castagnoli) != l.crc {
		return buf, fmt.Errorf("pack %d at %d: %w", l.pack, l.off, chunk.ErrCorrupt)
	}
	return buf, nil
}

// sync makes every pack written before it was called durable. The
// fdatasyncs run without mu, on duplicates of the files' descriptors (a
// pack removed meanwhile keeps its own), so other writers' appends are
// not held up behind a sync of data they do not wait for: a fetch that
// starts while another commits gets its first chunks stored at once.
func (p *packs) sync() error {
	p.bg.Wait()
	type job struct {
		n    uint32
		fd   int   // -1: nothing to sync, only pages to drop
		upto int64 // what the sync covers
	}
	p.mu.Lock()
	if err := p.bgErr; err != nil {
		p.bgErr = nil
		p.mu.Unlock()
		return err
	}
	var jobs []job
	var errs []error
	for n := range p.uncached {
		if !p.dirty[n] {
			jobs = append(jobs, job{n, -1, p.extent(n)})
		}
	}
	for n := range p.dirty {
		fd, err := unix.Dup(int(p.files[n].Fd()))
		if err != nil {
			errs = append(errs, fmt.Errorf("sync pack %d: %w", n, err))
			continue
		}
		delete(p.dirty, n) // an append from now on dirties it again
		jobs = append(jobs, job{n, fd, p.extent(n)})
	}
	p.mu.Unlock()
	failed := map[uint32]bool{}
	for _, j := range jobs {
		if j.fd < 0 {
			continue
		}
		// fdatasync: the data plus what is needed to read it back (size,
		// allocation), without timestamps.
		if err := unix.Fdatasync(j.fd); err != nil {
			errs = append(errs, fmt.Errorf("sync pack %d: %w", j.n, err))
			failed[j.n] = true
		}
		unix.Close(j.fd)
	}
	// A pack that filled up after the first wait is synced in the
	// background, and what it holds may have been written before this call.
	p.bg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.bgErr; err != nil {
		p.bgErr = nil
		errs = append(errs, err)
	}
	for _, j := range jobs {
		if failed[j.n] {
			p.dirty[j.n] = true
		} else {
			p.dropSynced(j.n, j.upto)
		}
	}
	return errors.Join(errs...)
}

// extent is how far a sync started now covers pack n: the active pack's
// size (appends may follow), all of any other. Callers hold mu.
func (p *packs) extent(n uint32) int64 {
	if n == p.active {
		return p.size
	}
	return math.MaxInt64
}

// remove deletes a pack that holds no live chunk. The active pack is never removed.
func (p *packs) remove(n uint32) error {
	p.bg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	if n == p.active {
		return nil
	}
	if f := p.files[n]; f != nil {
		f.Close()
		delete(p.files, n)
		delete(p.dirty, n)
		delete(p.uncached, n)
	}
	return os.Remove(p.path(n))
}

// list returns the pack numbers and whether each is the active one.
func (p *packs) list() (nums []uint32, active uint32) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	for n := range p.files {
		nums = append(nums, n)
	}
	slices.Sort(nums)
	return nums, p.active
}

func (p *packs) close() error {
	p.bg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, f := range p.files {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}
