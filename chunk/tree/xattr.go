package tree

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
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

// readXattrs returns p's kept extended attributes (without following a
// symlink); nil when it has none or the file system keeps none.
func readXattrs(p string) (map[string][]byte, error) {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if errors.Is(err, syscall.ERANGE) {
		if n, err = unix.Llistxattr(p, nil); err == nil {
			buf = make([]byte, n)
			n, err = unix.Llistxattr(p, buf)
		}
	}
	if errors.Is(err, syscall.ENOTSUP) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("xattrs of %s: %w", p, err)
	}
	var out map[string][]byte
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		if name == "" || !keptXattr(name) {
			continue
		}
		size, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			return nil, fmt.Errorf("xattr %s of %s: %w", name, p, err)
		}
		v := make([]byte, size)
		if size > 0 {
			if size, err = unix.Lgetxattr(p, name, v); err != nil {
				return nil, fmt.Errorf("xattr %s of %s: %w", name, p, err)
			}
		}
		if out == nil {
			out = map[string][]byte{}
		}
		out[name] = v[:size]
	}
	return out, nil
}

// setXattrs gives the checked-out entry under dir its extended
// attributes; trusted. and security. ones only with owners (as root).
func setXattrs(dir string, e *chunk.Entry, owners bool) error {
	p := filepath.Join(dir, filepath.FromSlash(e.Path))
	for name, v := range e.Xattrs {
		if !owners && !strings.HasPrefix(name, "user.") && !strings.HasPrefix(name, "system.") {
			continue
		}
		if err := unix.Lsetxattr(p, name, v, 0); err != nil {
			return fmt.Errorf("xattr %s: %w", name, err)
		}
	}
	return nil
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
