package badgerstore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/dgraph-io/badger/v4"
	"github.com/ipfs/go-cid"

	"github.com/p2pimg/p2pimg/chunk"
)

// GetManyInto returns what GetInto would for every chunk: runs of chunks
// adjacent in a pack, chunks in another pack or out of order, a chunk
// asked for twice, one not stored, a buffer of the wrong size, and a
// chunk whose bytes rotted on disk (only that one fails).
func TestGetManyInto(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	db, err := OpenWith(dir, Options{PackSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var blocks []chunk.Block
	for i := range 40 {
		b, _ := chunk.Sum(fill(i, 60<<10+i), chunk.SHA256)
		blocks = append(blocks, b)
	}
	for i := 0; i < len(blocks); i += 8 { // several records a write, several packs
		if err := db.Put(ctx, blocks[i:i+8]...); err != nil {
			t.Fatal(err)
		}
	}
	missing, _ := chunk.Sum([]byte("never stored"), chunk.SHA256)
	rotten := blocks[13]
	l, err := db.locOf(rotten.CID())
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "packs", filepathPack(l.pack)), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{^rotten.Data()[100]}, l.off+100); err != nil {
		t.Fatal(err)
	}
	f.Close()

	order := []int{0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 30, 20, 21, 21, 39, 5}
	var ids []cid.Cid
	var bufs [][]byte
	for _, i := range order {
		ids = append(ids, blocks[i].CID())
		bufs = append(bufs, make([]byte, len(blocks[i].Data())))
	}
	ids = append(ids, missing.CID(), blocks[7].CID())
	bufs = append(bufs, make([]byte, len(missing.Data())), make([]byte, 10))
	errs := db.GetManyInto(ctx, ids, bufs)
	for k, i := range order {
		switch {
		case i == 13:
			if !errors.Is(errs[k], chunk.ErrCorrupt) {
				t.Errorf("rotten chunk: err %v, want ErrCorrupt", errs[k])
			}
		case errs[k] != nil:
			t.Errorf("chunk %d: %v", i, errs[k])
		case !bytes.Equal(bufs[k], blocks[i].Data()):
			t.Errorf("chunk %d: wrong bytes", i)
		}
	}
	if n := len(order); !errors.Is(errs[n], chunk.ErrNotFound) {
		t.Errorf("missing chunk: err %v, want ErrNotFound", errs[n])
	}
	if n := len(order) + 1; errs[n] == nil {
		t.Error("a buffer of the wrong size: no error")
	}
}

func (s *DB) locOf(id cid.Cid) (l loc, err error) {
	err = s.db.View(func(txn *badger.Txn) (e error) { l, e = s.lookup(txn, id); return })
	return
}

func filepathPack(n uint32) string { return filepath.Base((&packs{}).path(n)) }
