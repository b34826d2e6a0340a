package fuseview

import (
	"context"

	"github.com/ipfs/go-cid"
)

// manyReader is a store that reads several chunks at once: badgerstore
// reads chunks lying one after the other in a pack with one system call,
// straight into the buffers given.
type manyReader interface {
	// GetManyInto fills bufs[i] with chunk ids[i] (len(bufs[i]) is its
	// size); errs[i] is nil when it did, wraps chunk.ErrNotFound when the
	// chunk is not stored, or says what else went wrong.
	GetManyInto(ctx context.Context, ids []cid.Cid, bufs [][]byte) (errs []error)
}

// readMany reads the non-zero chunks first..last that [off, end) covers
// whole with one call to the store, straight into dest (which holds
// [off, end)), and reports which it read (nil: none, the store cannot or
// there are fewer than two). A sequential read of 1 MiB is then one pack
// read rather than 16 side by side, whose out-of-order small reads the
// kernel's read-ahead of the pack could not follow. What it did not read,
// chunks missing from the store (lazy views) or damaged included, is left
// to readChunk, which fetches or reports them.
func (f *fileNode) readMany(ctx context.Context, dest []byte, off, end int64, first, last int) []bool {
	mr, ok := f.v.cfg.Store.(manyReader)
	if !ok {
		return nil
	}
	var idx []int
	for i := first; i <= last; i++ {
		if !f.zero[i] && f.offs[i] >= off && f.offs[i+1] <= end {
			idx = append(idx, i)
		}
	}
	if len(idx) < 2 {
		return nil
	}
	ids, bufs := make([]cid.Cid, len(idx)), make([][]byte, len(idx))
	for k, i := range idx {
		ids[k], bufs[k] = f.e.Chunks[i].CID, dest[f.offs[i]-off:f.offs[i+1]-off:f.offs[i+1]-off]
	}
	errs := mr.GetManyInto(ctx, ids, bufs)
	done := make([]bool, last-first+1)
	var n int64
	for k, i := range idx {
		if errs[k] == nil {
			done[i-first] = true
			f.v.trace(f.e.Chunks[i])
			n++
		}
	}
	f.v.count(func(s *Stats) { s.StoreReads += n })
	return done
}
