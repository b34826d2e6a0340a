package badgerstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/dgraph-io/badger/v4"

	"github.com/p2pimg/p2pimg/chunk"
)

// layerCache keeps the decoded layer records, so that listing every
// layer (which idle daemons do on their periodic passes) does not decode
// every record again while none changed. Every write of a layer record
// bumps gen after it commits; a listing is kept with the generation read
// before it began, so a write racing a listing only costs a re-read.
type layerCache struct {
	gen     atomic.Uint64
	mu      sync.Mutex
	at      uint64 // the generation list was read at
	valid   bool
	list    []chunk.Layer
	decodes atomic.Int64 // records decoded by listings, for tests
}

// LayerGen is a counter that changes whenever a layer record is written
// or deleted through this store; equal values mean Layers would return
// the same records. It is not persisted: compare values of one open store.
func (s *DB) LayerGen() uint64 { return s.layers.gen.Load() }

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
	// disk before the record is, so that a complete layer is never missing
	// data: the packs, then the index.
	if err := s.Sync(); err != nil {
		return fmt.Errorf("sync before layer %s: %w", l.Name, err)
	}
	err = s.db.Update(func(txn *badger.Txn) error { return txn.Set(layerKey(n), v) })
	s.layers.gen.Add(1) // even on error: whether it landed is unknown
	if err != nil {
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

// Layers lists every layer record, sorted by name. While no record was
// written since the last listing it returns a copy of that listing
// without reading the database.
func (s *DB) Layers(_ context.Context) ([]chunk.Layer, error) {
	c := &s.layers
	c.mu.Lock()
	defer c.mu.Unlock()
	gen := c.gen.Load()
	if !c.valid || c.at != gen {
		list, err := s.readLayers()
		if err != nil {
			return nil, err
		}
		c.list, c.at, c.valid = list, gen, true
	}
	out := make([]chunk.Layer, len(c.list))
	for i, l := range c.list {
		l.Signature, l.Policy = bytes.Clone(l.Signature), bytes.Clone(l.Policy)
		out[i] = l
	}
	return out, nil
}

// readLayers decodes every layer record.
func (s *DB) readLayers() ([]chunk.Layer, error) {
	var out []chunk.Layer
	err := s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = []byte{pLayer}
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var l chunk.Layer
			s.layers.decodes.Add(1)
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
	s.layers.gen.Add(1)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return fmt.Errorf("layer %s: %w", n, chunk.ErrNotFound)
	}
	if err != nil {
		return err
	}
	return s.db.Sync()
}
