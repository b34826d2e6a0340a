// Package caller knows who is calling the local API, as the kernel tells
// it (SO_PEERCRED and SO_PEERGROUPS on the unix socket), and touches the
// file system with that caller's rights rather than the daemon's. It
// never decides what a caller may do (node/localapi does); it only makes
// sure that a file the caller could not open itself is never opened for it.
package caller

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Caller is the process at the other end of an API connection, as it was
// when it connected.
type Caller struct {
	PID    int32
	UID    uint32
	GID    uint32
	Groups []uint32 // supplementary groups
	// Unknown: the kernel did not say who called (or the request did not
	// come over the unix socket); such a caller may do nothing that needs
	// a right or touches a file.
	Unknown bool
}

// Privileged reports whether the caller is root or the daemon's own user:
// such a caller acts with the daemon's rights.
func (c Caller) Privileged() bool { return !c.Unknown && (c.UID == 0 || int(c.UID) == os.Geteuid()) }

// String names the caller for messages and logs: "uid 1001 (alice)".
func (c Caller) String() string {
	if c.Unknown {
		return "an unknown caller"
	}
	s := "uid " + strconv.FormatUint(uint64(c.UID), 10)
	if u, err := user.LookupId(strconv.FormatUint(uint64(c.UID), 10)); err == nil {
		s += " (" + u.Username + ")"
	}
	return s
}

// Names are the caller's user name and the names of its groups (primary
// first), as this host's user database has them; unknown ids are left out.
func (c Caller) Names() (userName string, groups []string) {
	if c.Unknown {
		return "", nil
	}
	if u, err := user.LookupId(strconv.FormatUint(uint64(c.UID), 10)); err == nil {
		userName = u.Username
	}
	for _, g := range append([]uint32{c.GID}, c.Groups...) {
		if gr, err := user.LookupGroupId(strconv.FormatUint(uint64(g), 10)); err == nil {
			groups = append(groups, gr.Name)
		}
	}
	return userName, groups
}

type ctxKey struct{}

// With returns ctx carrying c.
func With(ctx context.Context, c Caller) context.Context { return context.WithValue(ctx, ctxKey{}, c) }

// From is the caller ctx carries; ok is false for work that no API
// connection asked for (the daemon's own, and in-process tests), which
// acts with the daemon's rights.
func From(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(ctxKey{}).(Caller)
	return c, ok
}

// Privileged reports whether the work ctx belongs to acts with the
// daemon's own rights: no API caller, or a privileged one.
func Privileged(ctx context.Context) bool {
	c, ok := From(ctx)
	return !ok || c.Privileged()
}

// ErrNotUnix: credentials are only known for unix socket connections.
var ErrNotUnix = errors.New("not a unix socket connection")

// OfConn asks the kernel who is at the other end of a unix socket: the
// credentials it had when it connected, which it cannot forge.
func OfConn(conn net.Conn) (Caller, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return Caller{}, ErrNotUnix
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Caller{}, err
	}
	var c Caller
	var opErr error
	err = raw.Control(func(fd uintptr) {
		cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err != nil {
			opErr = fmt.Errorf("SO_PEERCRED: %w", err)
			return
		}
		c = Caller{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}
		c.Groups, opErr = peerGroups(int(fd))
	})
	if err == nil {
		err = opErr
	}
	return c, err
}

// peerGroups reads SO_PEERGROUPS (Linux 4.13+): the supplementary groups
// the peer had when it connected.
func peerGroups(fd int) ([]uint32, error) {
	buf := make([]uint32, 64)
	for {
		n := uint32(len(buf) * 4)
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
		switch {
		case e == 0:
			return buf[:n/4], nil
		case e == syscall.ERANGE && int(n/4) > len(buf):
			buf = make([]uint32, n/4)
		default:
			return nil, fmt.Errorf("SO_PEERGROUPS: %w", e)
		}
	}
}
