package tree

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/p2pimg/p2pimg/chunk"
)

// keptXattr reports whether an extended attribute belongs in a layer:
// user., trusted. and security. ones and POSIX ACLs, but not overlayfs's
// own (an upper directory's bookkeeping) nor SELinux labels (the host's
// policy, set again where the layer lands).
func keptXattr(name string) bool {
	switch {
	case strings.HasPrefix(name, "trusted.overlay."), name == "security.selinux":
		return false
	case strings.HasPrefix(name, "user."), strings.HasPrefix(name, "trusted."), strings.HasPrefix(name, "security."),
		name == "system.posix_acl_access", name == "system.posix_acl_default":
		return true
	}
	return false
}

// onInode calls fn with a path that names name's inode inside root, its
// last component not followed: an O_PATH descriptor opened through root,
// seen as /proc/self/fd/N. Every component is resolved inside root and the
// descriptor pins the inode, so a symlink or directory swapped in cannot
// redirect fn elsewhere. The xattr calls take no O_PATH descriptor
// themselves, and a symlink can be opened no other way; through /proc the
// path ends at the symlink itself, as with the l*xattr calls.
func onInode(root *os.Root, name string, fn func(p string) error) error {
	f, err := root.OpenFile(name, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	c, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := c.Control(func(fd uintptr) { ferr = fn("/proc/self/fd/" + strconv.Itoa(int(fd))) }); err != nil {
		return err
	}
	return ferr
}

// readXattrs returns the kept extended attributes of name under root (not
// following a symlink); nil when it has none or the file system keeps none.
func readXattrs(root *os.Root, name string) (out map[string][]byte, err error) {
	err = onInode(root, name, func(p string) error {
		out, err = pathXattrs(p).kept()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("xattrs of %s: %w", name, err)
	}
	return out, nil
}

// fileXattrs is readXattrs for a file already open (named name).
func fileXattrs(f *os.File, name string) (out map[string][]byte, err error) {
	c, err := f.SyscallConn()
	if err == nil {
		err = c.Control(func(fd uintptr) { out, err = fdXattrs(int(fd)).kept() })
	}
	if err != nil {
		return nil, fmt.Errorf("xattrs of %s: %w", name, err)
	}
	return out, nil
}

// xattrReader reads one inode's attributes, by a path (see onInode) or on
// an open descriptor.
type xattrReader struct {
	list func(buf []byte) (int, error)
	get  func(name string, buf []byte) (int, error)
}

func pathXattrs(p string) xattrReader {
	return xattrReader{
		list: func(buf []byte) (int, error) { return unix.Listxattr(p, buf) },
		get:  func(name string, buf []byte) (int, error) { return unix.Getxattr(p, name, buf) },
	}
}

func fdXattrs(fd int) xattrReader {
	return xattrReader{
		list: func(buf []byte) (int, error) { return unix.Flistxattr(fd, buf) },
		get:  func(name string, buf []byte) (int, error) { return unix.Fgetxattr(fd, name, buf) },
	}
}

// kept reads the inode's kept attributes.
func (x xattrReader) kept() (map[string][]byte, error) {
	buf := make([]byte, 4096)
	n, err := x.list(buf)
	if errors.Is(err, syscall.ERANGE) {
		if n, err = x.list(nil); err == nil {
			buf = make([]byte, n)
			n, err = x.list(buf)
		}
	}
	if errors.Is(err, syscall.ENOTSUP) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out map[string][]byte
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		if name == "" || !keptXattr(name) {
			continue
		}
		size, err := x.get(name, nil)
		if err != nil {
			return nil, fmt.Errorf("xattr %s: %w", name, err)
		}
		v := make([]byte, size)
		if size > 0 {
			if size, err = x.get(name, v); err != nil {
				return nil, fmt.Errorf("xattr %s: %w", name, err)
			}
		}
		if out == nil {
			out = map[string][]byte{}
		}
		out[name] = v[:size]
	}
	return out, nil
}

// setXattrs gives the checked-out entry under root its extended
// attributes; trusted. and security. ones only with owners (as root).
func setXattrs(root *os.Root, e *chunk.Entry, owners bool) error {
	if len(e.Xattrs) == 0 {
		return nil
	}
	return onInode(root, e.Path, func(p string) error {
		for name, v := range e.Xattrs {
			if !owners && !strings.HasPrefix(name, "user.") && !strings.HasPrefix(name, "system.") {
				continue
			}
			if err := unix.Setxattr(p, name, v, 0); err != nil {
				return fmt.Errorf("xattr %s: %w", name, err)
			}
		}
		return nil
	})
}

// linkedInode is the device and inode of a regular file with more than
// one name (zero otherwise).
func linkedInode(fi fs.FileInfo) [2]uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && fi.Mode().IsRegular() && st.Nlink > 1 {
		return [2]uint64{st.Dev, st.Ino}
	}
	return [2]uint64{}
}

// linkInodes marks each file after the first of a set of hard links
// (same device and inode, in path order) as a link to the first.
func linkInodes(entries []chunk.Entry, inodes [][2]uint64) {
	first := map[[2]uint64]string{}
	for i := range entries {
		if entries[i].Type != chunk.File || inodes[i] == [2]uint64{} {
			continue
		}
		if t, ok := first[inodes[i]]; ok {
			entries[i].Link = t
		} else {
			first[inodes[i]] = entries[i].Path
		}
	}
}
