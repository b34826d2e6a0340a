package fuseview

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"golang.org/x/sys/unix"

	"github.com/p2pimg/p2pimg/chunk"
)

// unmountDeadline is how long a test waits for Unmount before it calls it
// hung: far above unmountWait's bounds, so load cannot trip it.
const unmountDeadline = 2 * time.Minute

// unmountNow unmounts v, failing the test if that hangs.
func unmountNow(t *testing.T, v *View) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- v.Unmount() }()
	select {
	case err := <-done:
		return err
	case <-time.After(unmountDeadline):
		t.Fatalf("Unmount of %s did not return within %v", v.Dir(), unmountDeadline)
		return nil
	}
}

// stalled is a fetcher whose peers never answer: it returns only when its
// context ends, saying when it started.
type stalled struct{ started chan struct{} }

func (s stalled) FetchChunk(ctx context.Context, id cid.Cid) ([]byte, error) {
	s.started <- struct{}{}
	<-ctx.Done()
	return nil, ctx.Err()
}

// A read waiting for a chunk no peer sends does not hold Unmount (the
// daemon's stop) until the fetch times out: it fails with EIO at once.
func TestUnmountEndsReadInFlight(t *testing.T) {
	needFUSE(t)
	l := addTree(t, 1<<20, chunk.DefaultParams())
	var file *chunk.Entry
	for i := range l.m.Entries {
		if e := &l.m.Entries[i]; e.Type == chunk.File && e.Size > 100<<10 {
			file = e
			break
		}
	}
	lost := map[cid.Cid]bool{}
	for _, r := range file.Chunks {
		lost[r.CID] = true
	}
	f := stalled{started: make(chan struct{}, len(file.Chunks))}
	dir := t.TempDir()
	v, err := Mount(dir, l.m, Config{Store: missing{l.store, lost}, Fetch: f, FetchTimeout: time.Hour, Name: "p2pimg-test"})
	must(t, err)
	read := make(chan error, 1)
	go func() {
		_, err := os.ReadFile(filepath.Join(dir, file.Path))
		read <- err
	}()
	<-f.started
	if err := unmountNow(t, v); err != nil {
		t.Fatal(err)
	}
	if err := <-read; err == nil {
		t.Fatal("a read in flight when the view went away returned data")
	}
}

// A view whose file system outlives its mount point (another mount of it:
// a disk image bound elsewhere and held open, or a copy in a mount
// namespace made while it was mounted) still unmounts within a bound: its
// connection is aborted, and what is left of it fails instead of hanging.
func TestUnmountWhileMountedElsewhere(t *testing.T) {
	needFUSE(t)
	l := addTree(t, 1<<20, chunk.DefaultParams())
	dir := t.TempDir()
	v, err := Mount(dir, l.m, Config{Store: l.store, Name: "p2pimg-test"})
	must(t, err)
	other := t.TempDir()
	if err := unix.Mount(dir, other, "", unix.MS_BIND, ""); err != nil {
		v.Unmount()
		t.Skipf("bind mount: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(other, unix.MNT_DETACH) })
	held, err := os.Open(filepath.Join(other, "empty"))
	must(t, err)
	defer held.Close()
	if err := unmountNow(t, v); err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadDir(other); !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("reading what is left of an aborted view: %v, want ENOTCONN", err)
	}
}
