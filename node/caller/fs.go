package caller

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// FS runs file system calls with a caller's credentials, on one OS thread
// whose file system uid and gid and supplementary groups are the caller's:
// the kernel checks each open, create, chmod and rename as if the caller
// made it (modes, ACLs, LSMs), and what it creates is the caller's. The
// check and the use are one system call, so nothing can be swapped in
// between. Descriptors it opens may be read and written anywhere: the
// kernel checked the caller's rights when it opened them.
//
// A nil *FS runs calls directly, with the daemon's rights.
type FS struct {
	calls chan func()
}

// ErrCannotActFor: the daemon cannot take on the caller's credentials
// (it is not root), so it refuses to touch files for it.
var ErrCannotActFor = errors.New("the daemon cannot act for this user")

// Open returns the FS for the work ctx belongs to: nil (calls run with the
// daemon's rights) when no API caller or a privileged one asked for it,
// else a thread with the caller's credentials. Close it when done.
func Open(ctx context.Context) (*FS, error) {
	c, ok := From(ctx)
	if !ok || c.Privileged() {
		return nil, nil
	}
	if c.Unknown {
		return nil, fmt.Errorf("%w: the kernel did not say who is calling, so no file is touched for it", ErrCannotActFor)
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: it runs as uid %d and may not take on %s's rights; run the daemon as root, or as that user", ErrCannotActFor, os.Geteuid(), c)
	}
	f := &FS{calls: make(chan func())}
	ready := make(chan error)
	go f.run(c, ready)
	if err := <-ready; err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCannotActFor, err)
	}
	return f, nil
}

func (f *FS) run(c Caller, ready chan<- error) {
	// Never unlocked: the thread ends with this goroutine, so its
	// credentials never serve other work. (The runtime starts new threads
	// from a clean template thread, never by cloning a locked one.)
	runtime.LockOSThread()
	if err := become(c); err != nil {
		ready <- err
		return
	}
	ready <- nil
	for fn := range f.calls {
		fn()
	}
}

// become gives this thread (only: raw system calls, not the process-wide
// wrappers) the caller's groups, then file system gid and uid. A file
// system uid other than 0 also drops the capabilities that bypass file
// permissions (CAP_DAC_OVERRIDE, CAP_CHOWN, CAP_FOWNER, ...).
func become(c Caller) error {
	gids := make([]int, len(c.Groups))
	for i, g := range c.Groups {
		gids[i] = int(g)
	}
	if err := unix.Setgroups(gids); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	unix.SetfsgidRetGid(int(c.GID))
	if prev, _ := unix.SetfsgidRetGid(int(c.GID)); prev != int(c.GID) {
		return fmt.Errorf("setfsgid %d did not take (still %d)", c.GID, prev)
	}
	unix.SetfsuidRetUid(int(c.UID))
	if prev, _ := unix.SetfsuidRetUid(int(c.UID)); prev != int(c.UID) {
		return fmt.Errorf("setfsuid %d did not take (still %d)", c.UID, prev)
	}
	return nil
}

// Do runs fn with the caller's credentials and returns its error. Calls
// run one at a time; fn must not call Do.
func (f *FS) Do(fn func() error) error {
	if f == nil {
		return fn()
	}
	done := make(chan error, 1)
	f.calls <- func() { done <- fn() }
	return <-done
}

// Close ends the thread; Do must not be called after.
func (f *FS) Close() {
	if f != nil {
		close(f.calls)
	}
}
