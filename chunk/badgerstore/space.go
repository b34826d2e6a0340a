package badgerstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/dustin/go-humanize"
	"github.com/ipfs/go-cid"
	"golang.org/x/sys/unix"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/disk"
)

// Reserve checks, before a write of about need bytes starts, that the
// store's disk has room for it and the reserve; an error wrapping
// chunk.ErrNoSpace names both figures and the directory. It reserves
// nothing: writers running at once may still fill the disk, and a write
// that hits ENOSPC leaves nothing half-written anyway.
func (s *DB) Reserve(need int64) error {
	u, err := disk.Space(s.dir)
	if err != nil {
		return err
	}
	free := u.Free
	if need+s.reserve <= free {
		return nil
	}
	return fmt.Errorf("%w on %s: needs %s (%d bytes) plus a reserve of %s, %s (%d bytes) free; free space there (p2pimg gc gives back unused chunks) and try again",
		chunk.ErrNoSpace, s.dir, humanize.IBytes(uint64(need)), need, humanize.IBytes(uint64(s.reserve)),
		humanize.IBytes(uint64(max(free, 0))), free)
}

// recordStart is where the pack record of a chunk at l begins: its header
// (cid length byte, cid, 4-byte data length) comes before the data.
func recordStart(id cid.Cid, l loc) int64 { return l.off - int64(1+id.ByteLen()+4) }

// liveSpans is, per pack, the byte ranges live chunks' records take, sorted.
func (s *DB) liveSpans(ctx context.Context) (map[uint32][]span, error) {
	live := map[uint32][]span{}
	err := s.walkIndex(ctx, func(id cid.Cid, l loc) error {
		live[l.pack] = append(live[l.pack], span{recordStart(id, l), l.off + int64(l.n)})
		return nil
	})
	for _, sp := range live {
		slices.SortFunc(sp, func(a, b span) int { return cmp.Compare(a.lo, b.lo) })
	}
	return live, err
}

func (s *DB) Stats(ctx context.Context, keep func(cid.Cid) bool) (chunk.StoreStats, error) {
	var st chunk.StoreStats
	live := map[uint32]int64{}
	err := s.walkIndex(ctx, func(id cid.Cid, l loc) error {
		st.Chunks++
		st.StoredBytes += int64(l.n)
		live[l.pack] += l.off + int64(l.n) - recordStart(id, l)
		if keep != nil && !keep(id) {
			st.DeadBytes += int64(l.n)
		}
		return nil
	})
	if err != nil {
		return st, err
	}
	nums, _ := s.packs.list()
	for _, n := range nums {
		alloc, err := s.packs.usage(n)
		if errors.Is(err, errPackGone) {
			continue // removed by a gc since the listing: it holds nothing now
		}
		if err != nil {
			return st, err
		}
		st.AllocatedBytes += alloc
		// Blocks are whole: a pack's last block, and ones live records
		// share with dead ones, are not reclaimable, so this is at most
		// a few KiB per pack above what gc can give back.
		st.DeadBytes += max(alloc-live[n], 0)
	}
	return st, nil
}

// Compact gives back the disk of deleted chunks. A pack with no live chunk
// is removed; in the others the blocks only dead records use are punched
// out (the file keeps its size, reads there return zeros). It returns the
// bytes of disk given back.
//
// Crash safety: the index deletions are made durable before anything is
// punched, and the ranges come from the index under writeMu, so the index
// never points into a punched range, before or after a crash. Punched
// records read as zeros: a pack stays self-describing only up to its
// first hole.
func (s *DB) Compact(ctx context.Context) (int64, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if err := s.db.Sync(); err != nil {
		return 0, fmt.Errorf("compact: sync index: %w", err)
	}
	live, err := s.liveSpans(ctx)
	if err != nil {
		return 0, fmt.Errorf("compact: %w", err)
	}
	nums, active := s.packs.list()
	var freed int64
	for _, n := range nums {
		before, err := s.packs.usage(n)
		if err != nil {
			return freed, err
		}
		if len(live[n]) == 0 && n != active {
			if err := s.packs.remove(n); err != nil {
				return freed, fmt.Errorf("compact: remove pack %d: %w", n, err)
			}
			freed += before
			continue
		}
		if err := s.packs.punch(n, live[n]); err != nil {
			return freed, fmt.Errorf("compact: pack %d: %w", n, err)
		}
		after, err := s.packs.usage(n)
		if err != nil {
			return freed, err
		}
		freed += max(before-after, 0)
	}
	return freed, nil
}

// punchBlock is the granularity holes are punched at: a range is shrunk to
// whole blocks of it, so live records sharing a block are never touched.
const punchBlock = 4096

// punch frees the blocks of pack n that lie wholly outside the live spans
// (sorted), up to the pack's end (the active pack's appended size).
// Callers hold writeMu, so nothing is appended meanwhile.
func (p *packs) punch(n uint32, live []span) error {
	p.mu.RLock()
	f, end, active := p.files[n], p.size, p.active
	p.mu.RUnlock()
	if f == nil {
		return fmt.Errorf("pack %d is missing", n)
	}
	if n != active {
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		end = fi.Size()
	}
	var pos int64
	for _, sp := range append(live, span{end, end}) {
		lo := (pos + punchBlock - 1) / punchBlock * punchBlock
		hi := min(sp.lo, end) / punchBlock * punchBlock
		if hi > lo {
			err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, lo, hi-lo)
			if errors.Is(err, unix.EOPNOTSUPP) {
				return nil // a file system without holes keeps the space
			}
			if err != nil {
				return fmt.Errorf("punch %d bytes at %d: %w", hi-lo, lo, err)
			}
		}
		pos = max(pos, sp.hi)
	}
	return nil
}

// errPackGone is usage's answer for a pack that is not (or no longer) open.
var errPackGone = errors.New("pack is missing")

// usage is the disk allocated to pack n. The read lock is held across the
// Fstat: a gc removing the pack meanwhile closes its file under the write
// lock, so the descriptor cannot be closed (or reused) under the call.
func (p *packs) usage(n uint32) (alloc int64, err error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	f := p.files[n]
	if f == nil {
		return 0, fmt.Errorf("pack %d: %w", n, errPackGone)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, fmt.Errorf("pack %d: %w", n, err)
	}
	return st.Blocks * 512, nil
}
