// Package badgerstore keeps chunks, manifests and layer records in a badger
// v4 database under the daemon's data directory. It is the only package that
// imports badger.
//
// Chunks live in the value log (a small value threshold keeps 64 KiB values
// out of the LSM tree, which measured about 5x faster to write), and writes
// are not synced one by one: PutLayer syncs everything before it writes a
// layer record, which is the one durable step that makes a layer complete.
package badgerstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/ipfs/go-cid"

	"github.com/p2pimg/p2pimg/chunk"
)

// Key prefixes.
const (
	pChunk    = 'c'
	pManifest = 'm'
	pLayer    = 'l'
)

// DB is a badger-backed chunk.Store and chunk.Catalog.
type DB struct {
	db *badger.DB
}

var (
	_ chunk.Store   = (*DB)(nil)
	_ chunk.Catalog = (*DB)(nil)
)

// Open opens (creating if needed) the store in dir. Only one process may
// have a store open; a second Open fails with badger's lock error.
func Open(dir string, log *slog.Logger) (*DB, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts := badger.DefaultOptions(dir).
		WithLogger(badgerLogger{log}).
		WithSyncWrites(false).
		WithValueThreshold(1 << 10).
		WithCompression(options.None). // chunks of VM images rarely compress; zero chunks are stored once
		WithMemTableSize(16 << 20).
		WithNumMemtables(2).
		WithNumLevelZeroTables(3).
		WithNumLevelZeroTablesStall(8).
		WithBlockCacheSize(16 << 20).
		WithIndexCacheSize(16 << 20).
		WithValueLogFileSize(128 << 20).
		WithNumCompactors(2)
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	return &DB{db: db}, nil
}

// Close flushes and closes the database.
func (s *DB) Close() error { return s.db.Close() }

func key(prefix byte, id cid.Cid) []byte {
	b := id.Bytes()
	k := make([]byte, 1+len(b))
	k[0] = prefix
	copy(k[1:], b)
	return k
}

func (s *DB) Has(_ context.Context, id cid.Cid) (bool, error) {
	err := s.db.View(func(txn *badger.Txn) error {
		_, err := txn.Get(key(pChunk, id))
		return err
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return false, nil
	}
	return err == nil, err
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

func (s *DB) Get(_ context.Context, id cid.Cid) ([]byte, error) {
	var out []byte
	err := s.db.View(func(txn *badger.Txn) error {
		it, err := txn.Get(key(pChunk, id))
		if err != nil {
			return err
		}
		out, err = it.ValueCopy(nil)
		return err
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, fmt.Errorf("chunk %s: %w", id, chunk.ErrNotFound)
	}
	return out, err
}

func (s *DB) Put(_ context.Context, blocks ...chunk.Block) error {
	if len(blocks) == 1 {
		b := blocks[0]
		return s.db.Update(func(txn *badger.Txn) error { return txn.Set(key(pChunk, b.CID()), b.Data()) })
	}
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, b := range blocks {
		if err := wb.Set(key(pChunk, b.CID()), b.Data()); err != nil {
			return fmt.Errorf("store chunk %s: %w", b.CID(), err)
		}
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("store %d chunks: %w", len(blocks), err)
	}
	return nil
}

func (s *DB) Delete(_ context.Context, ids ...cid.Cid) error {
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, id := range ids {
		if err := wb.Delete(key(pChunk, id)); err != nil {
			return err
		}
	}
	return wb.Flush()
}

func (s *DB) Walk(ctx context.Context, withData bool, fn func(id cid.Cid, size int, data []byte) error) error {
	return s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = []byte{pChunk}
		opts.PrefetchValues = withData
		it := txn.NewIterator(opts)
		defer it.Close()
		var buf []byte
		for it.Rewind(); it.Valid(); it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			item := it.Item()
			id, err := cid.Cast(item.Key()[1:])
			if err != nil {
				return fmt.Errorf("store key %x is not a chunk id: %w", item.Key(), err)
			}
			size := int(item.ValueSize())
			var data []byte
			if withData {
				if buf, err = item.ValueCopy(buf[:0]); err != nil {
					return fmt.Errorf("read chunk %s: %w", id, err)
				}
				data, size = buf, len(buf)
			}
			if err := fn(id, size, data); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *DB) Stats(ctx context.Context) (chunk.StoreStats, error) {
	var st chunk.StoreStats
	err := s.Walk(ctx, false, func(_ cid.Cid, size int, _ []byte) error {
		st.Chunks++
		st.StoredBytes += int64(size)
		return nil
	})
	return st, err
}

func (s *DB) Sync() error { return s.db.Sync() }

// GC reclaims value-log space after chunks were deleted. It runs badger's
// value-log GC until there is nothing left worth rewriting.
func (s *DB) GC() error {
	for {
		err := s.db.RunValueLogGC(0.3)
		if errors.Is(err, badger.ErrNoRewrite) || errors.Is(err, badger.ErrRejected) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// Catalog.

func (s *DB) PutManifest(_ context.Context, id cid.Cid, data []byte) error {
	return s.db.Update(func(txn *badger.Txn) error { return txn.Set(key(pManifest, id), data) })
}

func (s *DB) GetManifest(_ context.Context, id cid.Cid) (*chunk.Manifest, error) {
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
	return chunk.DecodeManifest(data)
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

func layerKey(n chunk.Name) []byte { return append([]byte{pLayer}, n.String()...) }

func (s *DB) PutLayer(_ context.Context, l chunk.Layer) error {
	n, err := chunk.ParseName(l.Name)
	if err != nil {
		return err
	}
	v, err := json.Marshal(l)
	if err != nil {
		return err
	}
	// Everything before this record (its chunks and manifest) must be on
	// disk before the record is, so that a complete layer is never missing data.
	if err := s.db.Sync(); err != nil {
		return fmt.Errorf("sync before layer %s: %w", l.Name, err)
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(layerKey(n), v) }); err != nil {
		return fmt.Errorf("write layer %s: %w", l.Name, err)
	}
	return s.db.Sync()
}

func (s *DB) GetLayer(_ context.Context, n chunk.Name) (chunk.Layer, error) {
	var l chunk.Layer
	err := s.db.View(func(txn *badger.Txn) error {
		it, err := txn.Get(layerKey(n))
		if err != nil {
			return err
		}
		return it.Value(func(v []byte) error { return json.Unmarshal(v, &l) })
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return l, fmt.Errorf("layer %s: %w", n, chunk.ErrNotFound)
	}
	return l, err
}

func (s *DB) Layers(_ context.Context) ([]chunk.Layer, error) {
	var out []chunk.Layer
	err := s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = []byte{pLayer}
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var l chunk.Layer
			if err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &l) }); err != nil {
				return fmt.Errorf("layer record %q: %w", it.Item().Key()[1:], err)
			}
			out = append(out, l)
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

func (s *DB) DeleteLayer(_ context.Context, n chunk.Name) error {
	err := s.db.Update(func(txn *badger.Txn) error {
		if _, err := txn.Get(layerKey(n)); err != nil {
			return err
		}
		return txn.Delete(layerKey(n))
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return fmt.Errorf("layer %s: %w", n, chunk.ErrNotFound)
	}
	if err != nil {
		return err
	}
	return s.db.Sync()
}

// badgerLogger sends badger's log lines to slog; its chatty info lines go to debug.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any)   { b.l.Error(fmt.Sprintf(f, a...), "part", "badger") }
func (b badgerLogger) Warningf(f string, a ...any) { b.l.Warn(fmt.Sprintf(f, a...), "part", "badger") }
func (b badgerLogger) Infof(f string, a ...any)    { b.l.Debug(fmt.Sprintf(f, a...), "part", "badger") }
func (b badgerLogger) Debugf(f string, a ...any)   { b.l.Debug(fmt.Sprintf(f, a...), "part", "badger") }
