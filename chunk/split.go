package chunk

import (
	"context"
	"errors"
	"io"
	"runtime"
	"sync/atomic"

	"github.com/ipfs/go-cid"
	"golang.org/x/sync/errgroup"

	"github.com/p2pimg/p2pimg/chunk/internal/sha256x16"
)

// Chunk is one piece of a stream as Split hands it out.
type Chunk struct {
	Block
	Offset int64 // where the chunk starts in the stream
	Zero   bool  // every byte is zero
}

// readSize is how much Split reads from its input at a time.
const readSize = 4 << 20

// window is one read buffer; chunks are slices of it, so nothing is copied
// between reading and hashing. It returns to the pool when the cutter and
// every chunk cut from it are done with it.
type window struct {
	buf  []byte
	refs atomic.Int32
}

// Split cuts r into chunks under p and calls fn for each, one at a time in
// stream order. Hashing runs on every core while the cutter reads ahead. The
// chunk's data is valid only until fn returns (buffers are reused), so memory
// stays bounded whatever the input's size (about 4 windows of 4 MiB). An
// error from fn or r stops the split and is returned.
func Split(ctx context.Context, r io.Reader, p Params, fn func(Chunk) error) error {
	if err := p.Validate(); err != nil {
		return err
	}
	workers := runtime.GOMAXPROCS(0)
	type job struct {
		win    *window
		data   []byte
		off    int64
		id     cid.Cid
		zero   bool
		err    error
		hashed chan struct{}
	}
	const nwin, njobs = 4, 128
	winSize := max(readSize, 2*p.MaxSize())
	// Windows are made when first needed: a small input needs one.
	windows := make(chan *window, nwin)
	made := 0
	release := func(w *window) {
		if w.refs.Add(-1) == 0 {
			windows <- w
		}
	}
	jobs := make(chan *job, njobs)
	for range njobs {
		jobs <- &job{hashed: make(chan struct{}, 1)}
	}
	work := make(chan *job, njobs)
	order := make(chan *job, njobs)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { // the cutter
		defer close(order)
		defer close(work)
		c := newCutter(p)
		var w *window
		var start, end int
		var off int64
		eof := false
		for {
			if !eof && end-start < p.MaxSize() {
				var nw *window
				select {
				case nw = <-windows:
				default:
					if made < nwin {
						made++
						nw = &window{buf: make([]byte, winSize)}
						break
					}
					select {
					case nw = <-windows:
					case <-ctx.Done():
						return ctx.Err()
					}
				}
				nw.refs.Store(1) // the cutter's own reference
				if w != nil {
					end = copy(nw.buf, w.buf[start:end])
					release(w)
				}
				w, start = nw, 0
				n, err := io.ReadFull(r, w.buf[end:])
				end += n
				switch {
				case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
					eof = true
				case err != nil:
					return err
				}
			}
			if start == end {
				return nil
			}
			var n int
			if p.Mode == Fixed {
				n = min(end-start, int(p.Avg))
			} else {
				n = c.cut(w.buf[start:end])
			}
			var j *job
			select {
			case j = <-jobs:
			case <-ctx.Done():
				return ctx.Err()
			}
			w.refs.Add(1)
			j.win, j.data, j.off = w, w.buf[start:start+n], off
			start += n
			off += int64(n)
			work <- j // never blocks: capacity njobs
			order <- j
		}
	})
	for range workers {
		g.Go(func() error {
			zeroIDs := map[int]cid.Cid{} // per worker: no locking
			var batch, hashed []*job
			var msgs [][]byte
			var sums [][32]byte
			for j := range work {
				// Take what else is waiting, up to one set of hash lanes:
				// sha2-256 chunks are hashed side by side (sixteen at a
				// time with AVX-512), several times cheaper than one by one.
				batch = append(batch[:0], j)
			more:
				for len(batch) < 16 {
					select {
					case j, ok := <-work:
						if !ok {
							break more
						}
						batch = append(batch, j)
					default:
						break more
					}
				}
				hashed, msgs = hashed[:0], msgs[:0]
				for _, j := range batch {
					j.err = nil // jobs are reused
					j.zero = IsZero(j.data)
					if id, ok := zeroIDs[len(j.data)]; ok && j.zero {
						j.id = id
					} else if p.Hash == SHA256 {
						hashed, msgs = append(hashed, j), append(msgs, j.data)
					} else {
						j.id, j.err = SumCID(j.data, p.Hash)
					}
				}
				sums = append(sums[:0], make([][32]byte, len(msgs))...)
				sha256x16.Sum256Many(msgs, sums)
				for k, j := range hashed {
					j.id, j.err = cidOf(sums[k], SHA256)
				}
				for _, j := range batch {
					if j.zero && j.err == nil {
						zeroIDs[len(j.data)] = j.id
					}
					j.hashed <- struct{}{}
				}
			}
			return nil
		})
	}
	g.Go(func() error { // hands chunks to fn in order
		for j := range order {
			select {
			case <-j.hashed:
			case <-ctx.Done():
				return ctx.Err()
			}
			if j.err != nil {
				return j.err
			}
			if err := fn(Chunk{Block: Block{id: j.id, data: j.data}, Offset: j.off, Zero: j.zero}); err != nil {
				return err
			}
			release(j.win)
			j.win, j.data = nil, nil
			jobs <- j
		}
		return nil
	})
	return g.Wait()
}
