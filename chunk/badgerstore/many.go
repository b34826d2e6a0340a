package badgerstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"

	"github.com/dgraph-io/badger/v4"
	"github.com/ipfs/go-cid"
	"golang.org/x/sys/unix"

	"github.com/p2pimg/p2pimg/chunk"
)

// GetManyInto reads several chunks into the caller's buffers, bufs[i]
// holding exactly chunk ids[i] (its length is the size the caller
// expects). The index is read in one transaction, and chunks that lie one
// after the other in a pack (a file stored in order) are read with one
// preadv straight into their buffers: a 1 MiB read of 64 KiB chunks is one
// system call and one sequential read of the pack instead of 16. Every
// chunk is CRC-checked as in GetInto. errs[i] is nil when bufs[i] holds
// the chunk, wraps chunk.ErrNotFound when it is not stored and
// chunk.ErrCorrupt when its bytes fail the check; a chunk of another size
// than len(bufs[i]) is an error too. Safe for concurrent use.
func (s *DB) GetManyInto(_ context.Context, ids []cid.Cid, bufs [][]byte) []error {
	errs := make([]error, len(ids))
	locs := make([]loc, len(ids))
	err := s.db.View(func(txn *badger.Txn) error {
		for i, id := range ids {
			locs[i], errs[i] = s.lookup(txn, id)
		}
		return nil
	})
	if err != nil {
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	var order []int // the chunks found, in pack order
	for i, l := range locs {
		switch {
		case errs[i] != nil:
		case int(l.n) != len(bufs[i]):
			errs[i] = fmt.Errorf("chunk %s: stored %d bytes, the caller expects %d", ids[i], l.n, len(bufs[i]))
		default:
			order = append(order, i)
		}
	}
	slices.SortFunc(order, func(a, b int) int {
		return cmp.Or(cmp.Compare(locs[a].pack, locs[b].pack), cmp.Compare(locs[a].off, locs[b].off))
	})
	for len(order) > 0 {
		n := s.packs.readRun(locs, bufs, order, errs)
		for _, i := range order[:n] {
			if errs[i] != nil {
				errs[i] = fmt.Errorf("chunk %s: %w", ids[i], errs[i])
			}
		}
		order = order[n:]
	}
	return errs
}

// maxGap is the most bytes between two chunks of one pack that a run reads
// and throws away rather than issue a second read: a record header is at
// most 69 bytes, and a few KiB more cost less than another system call.
const maxGap = 4096

// maxRun bounds the buffers of one preadv (the kernel's IOV_MAX is 1024;
// each chunk may need a gap buffer before it).
const maxRun = 500

// readRun reads the chunks order[:n] of one pack with one preadv, the
// longest prefix of order whose chunks follow each other in the pack
// (a chunk asked for twice is read once), checks each and sets errs. It
// returns n (at least 1).
func (p *packs) readRun(locs []loc, bufs [][]byte, order []int, errs []error) int {
	first := locs[order[0]]
	n, end := 1, first.off+int64(first.n)
	for n < len(order) && n < maxRun {
		l := locs[order[n]]
		if l.pack != first.pack || l.off < end && l.off != locs[order[n-1]].off || l.off-end > maxGap {
			break
		}
		end = max(end, l.off+int64(l.n))
		n++
	}
	run := order[:n]
	p.mu.RLock()
	f := p.files[first.pack]
	p.mu.RUnlock()
	if f == nil {
		for _, i := range run {
			errs[i] = fmt.Errorf("pack %d is missing", first.pack)
		}
		return n
	}
	var gap []byte
	iov := make([][]byte, 0, 2*n)
	pos := first.off
	for k, i := range run {
		l := locs[i]
		if k > 0 && l.off == locs[run[k-1]].off {
			continue // the same record again: copied below
		}
		if g := l.off - pos; g > 0 {
			if gap == nil {
				gap = make([]byte, maxGap)
			}
			iov = append(iov, gap[:g])
		}
		iov = append(iov, bufs[i])
		pos = l.off + int64(l.n)
	}
	if err := preadvAll(int(f.Fd()), iov, first.off); err != nil {
		for _, i := range run {
			errs[i] = fmt.Errorf("read pack %d at %d: %w", first.pack, locs[i].off, err)
		}
		return n
	}
	for k, i := range run {
		l := locs[i]
		if k > 0 && l.off == locs[run[k-1]].off {
			copy(bufs[i], bufs[run[k-1]])
		}
		if crc32.Checksum(bufs[i], castagnoli) != l.crc {
			errs[i] = fmt.Errorf("pack %d at %d: %w", l.pack, l.off, chunk.ErrCorrupt)
		}
	}
	return n
}

// errShort is a pack read that ended before the records it was to read.
var errShort = errors.New("pack ends before the record")

// preadvAll fills every buffer from fd at off, in order, resuming after
// short reads.
func preadvAll(fd int, iov [][]byte, off int64) error {
	for len(iov) > 0 {
		n, err := unix.Preadv(fd, iov, off)
		if err != nil {
			return err
		}
		if n == 0 {
			return errShort
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
	}
	return nil
}
