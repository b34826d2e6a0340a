package disk

import (
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

func TestSpace(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	u, err := Space(dir)
	if err != nil {
		t.Fatal(err)
	}
	if u.Total <= 0 || u.Free < 0 || u.Free > u.Total {
		t.Fatalf("usage of %s: %+v", dir, u)
	}
	missing := filepath.Join(dir, "missing")
	_, err = Space(missing)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("space of a missing path: %v, want it not to exist, named", err)
	}
}
