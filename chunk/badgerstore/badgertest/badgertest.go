// Package badgertest opens real stores for other packages' tests. It is
// imported by tests only.
package badgertest

import (
	"testing"

	"github.com/p2pimg/p2pimg/chunk/badgerstore"
)

// Open opens a store in a new temporary directory, closed when the test
// ends.
func Open(t testing.TB) *badgerstore.DB {
	t.Helper()
	db, err := badgerstore.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}
