package fuseview

import (
	"context"
	"sort"
	"syscall"

	fusefs "github.com/hanwen/go-fuse/v2/fs"

	"github.com/p2pimg/p2pimg/chunk"
)

// The extended attributes of every kind of entry, from the manifest.
var (
	_ fusefs.NodeGetxattrer  = (*dirNode)(nil)
	_ fusefs.NodeListxattrer = (*dirNode)(nil)
	_ fusefs.NodeGetxattrer  = (*linkNode)(nil)
	_ fusefs.NodeListxattrer = (*linkNode)(nil)
	_ fusefs.NodeGetxattrer  = (*fileNode)(nil)
	_ fusefs.NodeListxattrer = (*fileNode)(nil)
)

func (d *dirNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return getxattr(d.e, attr, dest)
}

func (d *dirNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	return listxattr(d.e, dest)
}

func (l *linkNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return getxattr(l.e, attr, dest)
}

func (l *linkNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	return listxattr(l.e, dest)
}

func (f *fileNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return getxattr(f.e, attr, dest)
}

func (f *fileNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	return listxattr(f.e, dest)
}

// getxattr answers one attribute of e (nil: the root, which has none).
func getxattr(e *chunk.Entry, attr string, dest []byte) (uint32, syscall.Errno) {
	if e == nil {
		return 0, syscall.ENODATA
	}
	v, ok := e.Xattrs[attr]
	if !ok {
		return 0, syscall.ENODATA
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

// listxattr lists e's attribute names, each NUL-terminated, sorted.
func listxattr(e *chunk.Entry, dest []byte) (uint32, syscall.Errno) {
	if e == nil {
		return 0, 0
	}
	names := make([]string, 0, len(e.Xattrs))
	size := 0
	for n := range e.Xattrs {
		names = append(names, n)
		size += len(n) + 1
	}
	if len(dest) < size {
		return uint32(size), syscall.ERANGE
	}
	sort.Strings(names)
	at := 0
	for _, n := range names {
		at += copy(dest[at:], n)
		dest[at] = 0
		at++
	}
	return uint32(at), 0
}
