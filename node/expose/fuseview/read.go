package fuseview

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/p2pimg/p2pimg/chunk"
)

func (f *fileNode) Read(ctx context.Context, fh fusefs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	end := min(off+int64(len(dest)), f.size())
	if off >= end {
		return fuse.ReadResultData(nil), 0
	}
	if err := f.readBase(ctx, dest[:end-off], off, end); err != nil {
		return nil, syscall.EIO
	}
	return fuse.ReadResultData(dest[:end-off]), 0
}

// readBase fills dest with the layer's bytes at off; those at or past
// limit (or the file's end) read as zeros. A chunk the read covers whole
// is read from the store straight into dest (no buffer, no second copy):
// all of them in one store call where the store can (readMany); those it
// did not read, missing ones of a lazy view included, side by side, so a
// lazy view fetches them from peers in parallel.
func (f *fileNode) readBase(ctx context.Context, dest []byte, off, limit int64) error {
	end := min(off+int64(len(dest)), f.size(), limit)
	if off >= end {
		clear(dest)
		return nil
	}
	clear(dest[end-off:])
	first, last := f.chunkAt(off), f.chunkAt(end-1)
	if first == last {
		return f.readChunk(ctx, dest, off, end, first)
	}
	done := f.readMany(ctx, dest, off, end, first, last)
	errs := make([]error, last-first+1)
	var wg sync.WaitGroup
	for i := first; i <= last; i++ {
		read := func() { errs[i-first] = f.readChunk(ctx, dest, off, end, i) }
		switch {
		case done != nil && done[i-first]:
			continue
		case f.zero[i] || i == last:
			read()
			continue
		}
		wg.Add(1)
		if !f.v.readers.try(func() { read(); wg.Done() }) {
			read()
			wg.Done()
		}
	}
	wg.Wait()
	return errors.Join(errs...)
}

// readChunk fills the part of dest (which holds [off, end) of the file)
// that chunk i covers.
func (f *fileNode) readChunk(ctx context.Context, dest []byte, off, end int64, i int) error {
	from, to := max(off, f.offs[i]), min(end, f.offs[i+1])
	out := dest[from-off : to-off : to-off]
	if f.zero[i] {
		clear(out)
		return nil
	}
	ref := f.e.Chunks[i]
	var err error
	if from == f.offs[i] && to == f.offs[i+1] {
		err = f.v.chunkInto(ctx, ref, out)
	} else {
		var data []byte
		if data, err = f.v.chunk(ctx, ref); err == nil {
			copy(out, data[from-f.offs[i]:to-f.offs[i]])
		}
	}
	if err != nil {
		f.v.count(func(s *Stats) { s.ReadErrors++ })
		f.v.cfg.Log.Warn("fuse view: read failed", "path", f.e.Path, "offset", from, "err", err)
	}
	return err
}

// chunkInto reads a whole chunk into out (len(out) == ref.Size): from the
// cache, straight from the store into out, or (missing) through the
// fetcher, once however many reads ask for it.
func (v *View) chunkInto(ctx context.Context, ref chunk.Ref, out []byte) error {
	v.trace(ref)
	if b, ok := v.cache.Peek(ref.CID); ok {
		copy(out, b)
		return nil
	}
	b, err := v.cfg.Store.GetInto(ctx, ref.CID, out)
	switch {
	case errors.Is(err, chunk.ErrNotFound):
		if b, err = v.cached(ctx, ref); err == nil {
			copy(out, b)
		}
		return err // cached told OnReadError
	case err != nil:
	case len(b) != len(out):
		err = fmt.Errorf("%d bytes, the manifest says %d", len(b), ref.Size)
	default:
		v.count(func(s *Stats) { s.StoreReads++ })
		if len(b) > 0 && &b[0] != &out[0] {
			copy(out, b)
		}
		return nil
	}
	if v.cfg.OnReadError != nil {
		v.cfg.OnReadError(ref.CID, err)
	}
	return fmt.Errorf("chunk %s: %w", ref.CID, err)
}

// chunk returns a chunk's bytes: from the cache, the store, or (missing)
// the fetcher, which verifies before it returns.
func (v *View) chunk(ctx context.Context, ref chunk.Ref) ([]byte, error) {
	v.trace(ref)
	return v.cached(ctx, ref)
}

func (v *View) trace(ref chunk.Ref) {
	if v.cfg.OnChunk != nil {
		v.cfg.OnChunk(ref.CID)
	}
}

// cached is chunk without the trace: concurrent asks for one chunk load
// it once, and what was loaded stays in a small cache (a chunk straddling
// two reads is read once).
func (v *View) cached(ctx context.Context, ref chunk.Ref) ([]byte, error) {
	if b, ok := v.cache.Get(ref.CID); ok {
		return b, nil
	}
	b, err, _ := v.flight.Do(ref.CID.KeyString(), func() (any, error) { return v.load(ctx, ref) })
	if err != nil {
		return nil, err
	}
	return b.([]byte), nil
}

// load reads one chunk from the store, or fetches it when missing.
func (v *View) load(ctx context.Context, ref chunk.Ref) ([]byte, error) {
	b, err := v.cfg.Store.GetInto(ctx, ref.CID, nil)
	if err == nil {
		v.count(func(s *Stats) { s.StoreReads++ })
	}
	if errors.Is(err, chunk.ErrNotFound) && v.cfg.Fetch != nil {
		fctx, cancel := context.WithTimeout(ctx, v.cfg.FetchTimeout)
		b, err = v.cfg.Fetch.FetchChunk(fctx, ref.CID)
		cancel()
		if err == nil {
			v.count(func(s *Stats) { s.Fetched++; s.FetchedBytes += int64(len(b)) })
		}
	}
	if err == nil && len(b) != int(ref.Size) {
		err = fmt.Errorf("chunk %s: %d bytes, the manifest says %d", ref.CID, len(b), ref.Size)
	}
	if err != nil {
		if v.cfg.OnReadError != nil {
			v.cfg.OnReadError(ref.CID, err)
		}
		return nil, fmt.Errorf("chunk %s: %w", ref.CID, err)
	}
	v.cache.Add(ref.CID, b)
	return b, nil
}
