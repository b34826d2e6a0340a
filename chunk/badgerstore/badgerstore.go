// Package badgerstore is the daemon's store: chunk bytes in append-only
// pack files, and a badger v4 database holding the chunk index, manifests and
// layer records. It is the only package that imports badger.
//
// Nothing is synced write by write: PutLayer syncs the packs and the index
// before it writes a layer record, which is the one durable step that makes
// a layer complete. A crash loses at most chunks that no complete layer
// needs yet; an incomplete layer is resumed by fetching what is missing.
package badgerstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/ipfs/go-cid"
	"golang.org/x/sys/unix"

	"github.com/p2pimg/p2pimg/chunk"
)

// Key prefixes.
const (
	pChunk    = 'c' // chunk id -> loc in a pack
	pManifest = 'm'
	pLayer    = 'l'
	pRecord   = 'r' // the daemon's small records, by key
)

// DB is the store: a chunk.Store and a chunk.Catalog.
type DB struct {
	db      *badger.DB
	packs   *packs
	dir     string
	reserve int64
	// writeMu orders writers of the chunk index (Put, Delete, Compact), so a
	// chunk is never appended twice and compaction never races a delete.
	writeMu sync.Mutex
	layers  layerCache
}

var (
	_ chunk.Store   = (*DB)(nil)
	_ chunk.Catalog = (*DB)(nil)
)

// Options adjust a store.
type Options struct {
	Log      *slog.Logger // default: discard
	PackSize int64        // a new pack is started past this size; default 256 MiB
	// Reserve is the free space Reserve leaves on the store's disk; default
	// 16 MiB (negative: none).
	Reserve int64
}

// Open opens (creating if needed) the store in dir: dir/index holds the
// badger database, dir/packs the chunk bytes. Only one process may have a
// store open; a second Open fails with badger's lock error.
func Open(dir string, log *slog.Logger) (*DB, error) {
	return OpenWith(dir, Options{Log: log})
}

// OpenWith is Open with options.
func OpenWith(dir string, o Options) (*DB, error) {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.PackSize <= 0 {
		o.PackSize = 256 << 20
	}
	switch {
	case o.Reserve == 0:
		o.Reserve = 16 << 20
	case o.Reserve < 0:
		o.Reserve = 0
	}
	if err := roomToOpen(dir); err != nil {
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	// Every value is small (16-byte chunk locations, manifests, records), so
	// the LSM tree holds them; small tables and caches keep memory low.
	opts := badger.DefaultOptions(filepath.Join(dir, "index")).
		WithLogger(badgerLogger{log}).
		WithSyncWrites(false).
		WithCompression(options.None).
		WithMemTableSize(16 << 20).
		WithNumMemtables(2).
		WithBlockCacheSize(16 << 20).
		WithIndexCacheSize(16 << 20).
		WithValueLogFileSize(64 << 20).
		WithNumCompactors(2)
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	p, err := openPacks(filepath.Join(dir, "packs"), o.PackSize)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	return &DB{db: db, packs: p, dir: dir, reserve: o.Reserve}, nil
}

// minOpenFree is the least free space the store opens with: badger maps
// its files and writes to them through the mapping, and a write to a
// mapped page the full disk cannot hold kills the process (SIGBUS) rather
// than failing.
const minOpenFree = 4 << 20

// roomToOpen refuses a disk too full for the store to open safely, naming
// the numbers (the nearest existing directory of dir is asked).
func roomToOpen(dir string) error {
	p := dir
	var st unix.Statfs_t
	for unix.Statfs(p, &st) != nil {
		if p == filepath.Dir(p) {
			return nil // unknown: badger will tell
		}
		p = filepath.Dir(p)
	}
	if free := int64(st.Bavail) * st.Bsize; free < minOpenFree {
		return fmt.Errorf("%w: its disk has %d bytes free, and the index needs %d to open; free some space there (disk images' written blocks are under the data directory's delta/)",
			chunk.ErrNoSpace, free, minOpenFree)
	}
	return nil
}

// Close syncs and closes the store.
func (s *DB) Close() error {
	return errors.Join(s.packs.sync(), s.packs.close(), s.db.Close())
}

func key(prefix byte, id cid.Cid) []byte {
	b := id.Bytes()
	k := make([]byte, 1+len(b))
	k[0] = prefix
	copy(k[1:], b)
	return k
}

// lookup returns where a chunk is, or ErrNotFound.
func (s *DB) lookup(txn *badger.Txn, id cid.Cid) (loc, error) {
	it, err := txn.Get(key(pChunk, id))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return loc{}, fmt.Errorf("chunk %s: %w", id, chunk.ErrNotFound)
	}
	if err != nil {
		return loc{}, err
	}
	var l loc
	err = it.Value(func(v []byte) (err error) { l, err = decodeLoc(v); return })
	return l, err
}

func (s *DB) Has(ctx context.Context, id cid.Cid) (bool, error) {
	has, err := s.HasMany(ctx, []cid.Cid{id})
	return err == nil && has[0], err
}

func (s *DB) HasMany(_ context.Context, ids []cid.Cid) ([]bool, error) {
	out := make([]bool, len(ids))
	err := s.db.View(func(txn *badger.Txn) error {
		for i, id := range ids {
			_, err := txn.Get(key(pChunk, id))
			switch {
			case err == nil:
				out[i] = true
			case !errors.Is(err, badger.ErrKeyNotFound):
				return err
			}
		}
		return nil
	})
	return out, err
}

func (s *DB) Get(ctx context.Context, id cid.Cid) ([]byte, error) {
	return s.GetInto(ctx, id, nil)
}

func (s *DB) GetInto(_ context.Context, id cid.Cid, buf []byte) ([]byte, error) {
	// Compaction may move a chunk between our lookup and our read; then the
	// second lookup finds its new place.
	var err error
	var data []byte
	for range 2 {
		var l loc
		if err = s.db.View(func(txn *badger.Txn) (e error) { l, e = s.lookup(txn, id); return }); err != nil {
			return nil, err
		}
		if data, err = s.packs.read(l, buf); err == nil || errors.Is(err, chunk.ErrCorrupt) {
			break
		}
	}
	if err == nil {
		return data, nil
	}
	return nil, fmt.Errorf("chunk %s: %w", id, err)
}

func (s *DB) Put(_ context.Context, blocks ...chunk.Block) error { return s.put(blocks, false) }

// PutUncached is Put for data this host will not read again soon: once the
// chunks are synced (in the background as packs fill, or by Sync), their
// pages leave the OS page cache. A fetch stores chunks this way, so
// replicating a large image does not push a hypervisor's own cache out,
// and its writes keep reusing the same memory instead of claiming more.
func (s *DB) PutUncached(_ context.Context, blocks ...chunk.Block) error {
	return s.put(blocks, true)
}

func (s *DB) put(blocks []chunk.Block, uncached bool) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	recs := make([]record, 0, len(blocks))
	err := s.db.View(func(txn *badger.Txn) error {
		seen := map[cid.Cid]bool{}
		for _, b := range blocks {
			if seen[b.CID()] {
				continue
			}
			seen[b.CID()] = true
			_, err := txn.Get(key(pChunk, b.CID()))
			if errors.Is(err, badger.ErrKeyNotFound) {
				recs = append(recs, record{b.CID(), b.Data()})
			} else if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil || len(recs) == 0 {
		return err
	}
	return s.index(recs, uncached)
}

// index appends records to the packs and points the index at them. Callers hold writeMu.
func (s *DB) index(recs []record, uncached bool) error {
	locs, err := s.packs.append(recs, uncached)
	if err != nil {
		return fmt.Errorf("store %d chunks: %w", len(recs), err)
	}
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for i, r := range recs {
		if err := wb.Set(key(pChunk, r.id), locs[i].encode()); err != nil {
			return fmt.Errorf("index chunk %s: %w", r.id, err)
		}
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("index %d chunks: %w", len(recs), err)
	}
	return nil
}

func (s *DB) Delete(_ context.Context, ids ...cid.Cid) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, id := range ids {
		if err := wb.Delete(key(pChunk, id)); err != nil {
			return err
		}
	}
	return wb.Flush()
}

// walkIndex calls fn for every chunk with its location.
func (s *DB) walkIndex(ctx context.Context, fn func(id cid.Cid, l loc) error) error {
	return s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = []byte{pChunk}
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			item := it.Item()
			id, err := cid.Cast(item.KeyCopy(nil)[1:])
			if err != nil {
				return fmt.Errorf("store key %x is not a chunk id: %w", item.Key(), err)
			}
			var l loc
			if err := item.Value(func(v []byte) (err error) { l, err = decodeLoc(v); return }); err != nil {
				return fmt.Errorf("chunk %s: %w", id, err)
			}
			if err := fn(id, l); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *DB) Walk(ctx context.Context, withData bool, fn func(id cid.Cid, size int, data []byte) error) error {
	var buf []byte
	return s.walkIndex(ctx, func(id cid.Cid, l loc) error {
		if !withData {
			return fn(id, int(l.n), nil)
		}
		data, err := s.packs.read(l, buf)
		if err != nil && !errors.Is(err, chunk.ErrCorrupt) { // corrupt bytes go to fn, which verifies
			return fmt.Errorf("chunk %s: %w", id, err)
		}
		buf = data
		return fn(id, len(data), data)
	})
}

func (s *DB) Sync() error {
	if err := s.packs.sync(); err != nil {
		return err
	}
	return s.db.Sync()
}

// Catalog.

func (s *DB) PutManifest(_ context.Context, id cid.Cid, data []byte) error {
	return s.db.Update(func(txn *badger.Txn) error { return txn.Set(key(pManifest, id), data) })
}

func (s *DB) GetManifest(ctx context.Context, id cid.Cid) (*chunk.Manifest, error) {
	data, err := s.ManifestBytes(ctx, id)
	if err != nil {
		return nil, err
	}
	return chunk.DecodeManifest(data)
}

func (s *DB) ManifestBytes(_ context.Context, id cid.Cid) ([]byte, error) {
	var data []byte
	err := s.db.View(func(txn *badger.Txn) error {
		it, err := txn.Get(key(pManifest, id))
		if err != nil {
			return err
		}
		data, err = it.ValueCopy(nil)
		return err
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, fmt.Errorf("manifest %s: %w", id, chunk.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	if got := chunk.ManifestCID(data); !got.Equals(id) {
		return nil, fmt.Errorf("manifest %s: stored bytes hash to %s: %w", id, got, chunk.ErrHashMismatch)
	}
	return data, nil
}

func (s *DB) Manifests(_ context.Context) ([]cid.Cid, error) {
	var out []cid.Cid
	err := s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = []byte{pManifest}
		opts.PrefetchValues = false
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			id, err := cid.Cast(it.Item().KeyCopy(nil)[1:])
			if err != nil {
				return fmt.Errorf("store key %x is not a manifest id: %w", it.Item().Key(), err)
			}
			out = append(out, id)
		}
		return nil
	})
	return out, err
}

func (s *DB) DeleteManifest(_ context.Context, id cid.Cid) error {
	return s.db.Update(func(txn *badger.Txn) error { return txn.Delete(key(pManifest, id)) })
}

// badgerLogger sends badger's log lines to slog; its chatty info lines go to debug.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any)   { b.l.Error(fmt.Sprintf(f, a...), "part", "badger") }
func (b badgerLogger) Warningf(f string, a ...any) { b.l.Warn(fmt.Sprintf(f, a...), "part", "badger") }
func (b badgerLogger) Infof(f string, a ...any)    { b.l.Debug(fmt.Sprintf(f, a...), "part", "badger") }
func (b badgerLogger) Debugf(f string, a ...any)   { b.l.Debug(fmt.Sprintf(f, a...), "part", "badger") }

// PutRecord durably stores one of the daemon's small records.
func (s *DB) PutRecord(key string, v []byte) error {
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(append([]byte{pRecord}, key...), v) }); err != nil {
		return fmt.Errorf("write record %s: %w", key, err)
	}
	return s.db.Sync()
}

// DeleteRecord removes a record. Idempotent.
func (s *DB) DeleteRecord(key string) error {
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Delete(append([]byte{pRecord}, key...)) }); err != nil {
		return err
	}
	return s.db.Sync()
}

// Records returns every record whose key starts with prefix.
func (s *DB) Records(prefix string) (map[string][]byte, error) {
	out := map[string][]byte{}
	err := s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = append([]byte{pRecord}, prefix...)
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			out[string(it.Item().Key()[1:])] = v
		}
		return nil
	})
	return out, err
}
