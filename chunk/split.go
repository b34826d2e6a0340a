package chunk

import (
	"context"
	"errors"
	"io"
	"io/fs"
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
	s := newSplitter(r, p)
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.cut(ctx) })
	for range runtime.GOMAXPROCS(0) {
		g.Go(s.hash)
	}
	g.Go(func() error { return s.deliver(ctx, fn) })
	return g.Wait()
}

// job is one chunk on its way from the cutter through a hasher to fn.
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

// splitter is one Split: the cutter reads into windows and cuts jobs from
// them, hands each to the hashers (work) and, in stream order, to deliver
// (order); deliver returns each job (jobs) and its window once fn is done.
type splitter struct {
	r       io.Reader
	p       Params
	winSize int
	windows chan *window // free windows
	made    int          // windows made so far (at most nwin)
	jobs    chan *job    // free jobs
	work    chan *job
	order   chan *job

	// The cutter's place: the window it cuts from, the bytes of it not
	// cut yet (start:end), their offset in the stream and whether r ended.
	w          *window
	start, end int
	off        int64
	eof        bool
}

func newSplitter(r io.Reader, p Params) *splitter {
	s := &splitter{r: r, p: p, winSize: windowSize(r, p), windows: make(chan *window, nwin),
		jobs: make(chan *job, njobs), work: make(chan *job, njobs), order: make(chan *job, njobs)}
	for range njobs {
		s.jobs <- &job{hashed: make(chan struct{}, 1)}
	}
	return s
}

// windowSize is readSize, or less for an input that says it is smaller (a
// file: adding many small files would otherwise spend most of its time
// clearing windows). A window always holds two chunks of the largest size,
// so the cuts never depend on it, even when a file grew since it told.
func windowSize(r io.Reader, p Params) int {
	size := int64(readSize)
	if f, ok := r.(interface{ Stat() (fs.FileInfo, error) }); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
			size = min(size, fi.Size()+1) // +1: the first read sees the end
		}
	}
	return max(int(size), 2*p.MaxSize())
}

func (s *splitter) release(w *window) {
	if w.refs.Add(-1) == 0 {
		s.windows <- w
	}
}

// cut cuts the stream into jobs until r ends.
func (s *splitter) cut(ctx context.Context) error {
	defer close(s.order)
	defer close(s.work)
	c := newCutter(s.p)
	for {
		if !s.eof && s.end-s.start < s.p.MaxSize() {
			if err := s.refill(ctx); err != nil {
				return err
			}
		}
		if s.start == s.end {
			return nil
		}
		var n int
		if s.p.Mode == Fixed {
			n = min(s.end-s.start, int(s.p.Avg))
		} else {
			n = c.cut(s.w.buf[s.start:s.end])
		}
		var j *job
		select {
		case j = <-s.jobs:
		case <-ctx.Done():
			return ctx.Err()
		}
		s.w.refs.Add(1)
		j.win, j.data, j.off = s.w, s.w.buf[s.start:s.start+n], s.off
		s.start += n
		s.off += int64(n)
		s.work <- j // never blocks: capacity njobs
		s.order <- j
	}
}

// refill moves what is left to cut to the front of a free window and
// reads behind it until the window is full or r ends.
func (s *splitter) refill(ctx context.Context) error {
	nw, err := s.freeWindow(ctx)
	if err != nil {
		return err
	}
	nw.refs.Store(1) // the cutter's own reference
	if s.w != nil {
		s.end = copy(nw.buf, s.w.buf[s.start:s.end])
		s.release(s.w)
	}
	s.w, s.start = nw, 0
	n, err := io.ReadFull(s.r, s.w.buf[s.end:])
	s.end += n
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		s.eof = true
	case err != nil:
		return err
	}
	return nil
}

// freeWindow returns a window nothing uses: a returned one, else a new
// one while fewer than nwin exist (a small input needs one), else the
// next one returned.
func (s *splitter) freeWindow(ctx context.Context) (*window, error) {
	select {
	case w := <-s.windows:
		return w, nil
	default:
	}
	if s.made < nwin {
		s.made++
		return &window{buf: make([]byte, s.winSize)}, nil
	}
	select {
	case w := <-s.windows:
		return w, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// hash is a hasher: it takes jobs as they are cut, hashes them in
// batches and marks each hashed.
func (s *splitter) hash() error {
	h := hasher{hash: s.p.Hash, zeroIDs: map[int]cid.Cid{}}
	var batch []*job
	for j := range s.work {
		// Take what else is waiting, up to one set of hash lanes:
		// sha2-256 chunks are hashed side by side (sixteen at a
		// time with AVX-512), several times cheaper than one by one.
		batch = append(batch[:0], j)
	more:
		for len(batch) < 16 {
			select {
			case j, ok := <-s.work:
				if !ok {
					break more
				}
				batch = append(batch, j)
			default:
				break more
			}
		}
		h.sum(batch)
	}
	return nil
}

// hasher is one hasher's state, reused from batch to batch.
type hasher struct {
	hash    uint64
	zeroIDs map[int]cid.Cid // the ids of all-zero chunks by size: per hasher, no locking
	hashed  []*job
	msgs    [][]byte
	sums    [][32]byte
}

// sum sets the id (or error) of every job in batch and marks it hashed.
func (h *hasher) sum(batch []*job) {
	h.hashed, h.msgs = h.hashed[:0], h.msgs[:0]
	for _, j := range batch {
		j.err = nil // jobs are reused
		j.zero = IsZero(j.data)
		if id, ok := h.zeroIDs[len(j.data)]; ok && j.zero {
			j.id = id
		} else if h.hash == SHA256 {
			h.hashed, h.msgs = append(h.hashed, j), append(h.msgs, j.data)
		} else {
			j.id, j.err = SumCID(j.data, h.hash)
		}
	}
	h.sums = append(h.sums[:0], make([][32]byte, len(h.msgs))...)
	sha256x16.Sum256Many(h.msgs, h.sums)
	for k, j := range h.hashed {
		j.id, j.err = cidOf(h.sums[k], SHA256)
	}
	for _, j := range batch {
		if j.zero && j.err == nil {
			h.zeroIDs[len(j.data)] = j.id
		}
		j.hashed <- struct{}{}
	}
}

// deliver hands the chunks to fn in stream order as they are hashed, and
// gives their jobs and windows back.
func (s *splitter) deliver(ctx context.Context, fn func(Chunk) error) error {
	for j := range s.order {
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
		s.release(j.win)
		j.win, j.data = nil, nil
		s.jobs <- j
	}
	return nil
}
