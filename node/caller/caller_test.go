package caller

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// The kernel names the process at the other end of the socket.
func TestOfConn(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := net.Dial("unix", sock)
		if err == nil {
			defer c.Close()
			c.Read(make([]byte, 1))
		}
	}()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cl, err := OfConn(c)
	if err != nil {
		t.Fatal(err)
	}
	if int(cl.UID) != os.Getuid() || int(cl.GID) != os.Getgid() || int(cl.PID) != os.Getpid() || cl.Unknown {
		t.Fatalf("caller %+v, want uid %d gid %d pid %d", cl, os.Getuid(), os.Getgid(), os.Getpid())
	}
	if !cl.Privileged() {
		t.Fatal("the daemon's own user is not privileged")
	}
	if _, err := OfConn(&net.TCPConn{}); !errors.Is(err, ErrNotUnix) {
		t.Fatalf("tcp conn: %v", err)
	}
}

// An unprivileged caller's FS opens only what that user could, creates
// files it owns, and leaves every other thread with the daemon's rights.
func TestFSActsAsCaller(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: only root may take on another user's credentials")
	}
	const nobody = 65534
	dir, err := os.MkdirTemp("", "p2pimg-caller-") // t.TempDir's parent is 0700
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("root only"), 0o600); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(dir, "open")
	os.Mkdir(open, 0o777)
	os.Chmod(open, 0o777)

	if err := os.WriteFile(filepath.Join(dir, "public"), []byte("all"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := With(context.Background(), Caller{UID: nobody, GID: nobody, Groups: []uint32{nobody}})
	fsys, err := Open(ctx)
	if err != nil || fsys == nil {
		t.Fatalf("Open: %v %v", fsys, err)
	}
	err = fsys.Do(func() error { _, err := os.ReadFile(secret); return err })
	if !errors.Is(err, fs.ErrPermission) {
		t.Fatalf("reading a root-only file as nobody: %v, want permission denied", err)
	}
	if err := fsys.Do(func() error { _, err := os.ReadFile(filepath.Join(dir, "public")); return err }); err != nil {
		t.Fatalf("reading a public file as nobody: %v", err)
	}
	made := filepath.Join(open, "made")
	if err := fsys.Do(func() error { return os.WriteFile(made, []byte("x"), 0o644) }); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(made)
	if err != nil || fi.Sys().(*syscall.Stat_t).Uid != nobody || fi.Sys().(*syscall.Stat_t).Gid != nobody {
		t.Fatalf("file made as nobody: %v %v", fi.Sys(), err)
	}
	if err := fsys.Do(func() error { return os.Chown(made, 0, 0) }); !errors.Is(err, fs.ErrPermission) {
		t.Fatalf("chown to root as nobody: %v", err)
	}
	fsys.Close()
	// The daemon's other goroutines (and threads) still read as root.
	for range 20 {
		if _, err := os.ReadFile(secret); err != nil {
			t.Fatalf("after the caller's FS: %v", err)
		}
	}

	for _, c := range []struct {
		name string
		ctx  context.Context
	}{{"no caller", context.Background()}, {"root", With(context.Background(), Caller{UID: 0})}} {
		if f, err := Open(c.ctx); f != nil || err != nil {
			t.Fatalf("%s: Open = %v, %v; want direct calls", c.name, f, err)
		}
	}
	if _, err := Open(With(context.Background(), Caller{Unknown: true})); !errors.Is(err, ErrCannotActFor) {
		t.Fatalf("unknown caller: %v", err)
	}
}
