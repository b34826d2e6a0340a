package fuseview

import (
	"context"
	"syscall"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/p2pimg/p2pimg/chunk"
)

type dirNode struct {
	fusefs.Inode
	e     *chunk.Entry
	nlink uint32
}

var _ fusefs.NodeGetattrer = (*dirNode)(nil)

func (d *dirNode) Getattr(ctx context.Context, f fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	fill(&out.Attr, d.e, syscall.S_IFDIR)
	out.Nlink = d.nlink
	out.Size = 4096
	out.SetTimeout(cacheTTL)
	return 0
}

type linkNode struct {
	fusefs.Inode
	e *chunk.Entry
}

var (
	_ fusefs.NodeGetattrer  = (*linkNode)(nil)
	_ fusefs.NodeReadlinker = (*linkNode)(nil)
)

func (l *linkNode) Getattr(ctx context.Context, f fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	fill(&out.Attr, l.e, syscall.S_IFLNK)
	out.Nlink = 1
	out.Size = uint64(len(l.e.Target))
	out.SetTimeout(cacheTTL)
	return 0
}

func (l *linkNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	return []byte(l.e.Target), 0
}
