package fuseview

import (
	"context"
	"sort"
	"syscall"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/p2pimg/p2pimg/chunk"
)

type fileNode struct {
	fusefs.Inode
	v    *View
	e    *chunk.Entry
	offs []int64 // offs[i]: where chunk i starts; offs[len] = size
	zero []bool  // chunk i is all zeros
	data int64   // bytes in non-zero chunks

	links uint32 // names besides its own (hard links), set while building
}

func (f *fileNode) addLink() { f.links++ }

var (
	_ fusefs.NodeGetattrer = (*fileNode)(nil)
	_ fusefs.NodeOpener    = (*fileNode)(nil)
	_ fusefs.NodeReader    = (*fileNode)(nil)
	_ fusefs.NodeLseeker   = (*fileNode)(nil)
)

func newFileNode(v *View, e *chunk.Entry) *fileNode {
	f := &fileNode{v: v, e: e, offs: make([]int64, len(e.Chunks)+1), zero: make([]bool, len(e.Chunks))}
	var off int64
	for i, ref := range e.Chunks {
		f.offs[i] = off
		f.zero[i] = v.isZero(ref)
		if !f.zero[i] {
			f.data += int64(ref.Size)
		}
		off += int64(ref.Size)
	}
	f.offs[len(e.Chunks)] = off
	return f
}

// isZero reports whether ref names an all-zero chunk, without reading it.
func (v *View) isZero(ref chunk.Ref) bool {
	v.zmu.Lock()
	defer v.zmu.Unlock()
	id, ok := v.zeroIDs[ref.Size]
	if !ok {
		id, _ = chunk.SumCID(make([]byte, ref.Size), v.hash)
		v.zeroIDs[ref.Size] = id
	}
	return id.Equals(ref.CID)
}

func (f *fileNode) size() int64 { return f.offs[len(f.offs)-1] }

func (f *fileNode) Getattr(ctx context.Context, fh fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	fill(&out.Attr, f.e, syscall.S_IFREG)
	out.Nlink = 1 + f.links
	out.Size = uint64(f.size())
	out.Blocks = uint64((f.data + 511) / 512)
	out.SetTimeout(cacheTTL)
	return 0
}

// Open keeps the kernel's page cache across opens: the content never changes.
func (f *fileNode) Open(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0 {
		return nil, 0, syscall.EROFS
	}
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

// chunkAt is the index of the chunk holding byte off (off < size).
func (f *fileNode) chunkAt(off int64) int {
	return sort.Search(len(f.e.Chunks), func(i int) bool { return f.offs[i+1] > off })
}

// Lseek answers SEEK_DATA and SEEK_HOLE from the zero chunks.
func (f *fileNode) Lseek(ctx context.Context, fh fusefs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	const seekData, seekHole = 3, 4
	size := f.size()
	if int64(off) >= size {
		return 0, syscall.ENXIO
	}
	wantZero := whence == seekHole
	if whence != seekData && whence != seekHole {
		return 0, syscall.EINVAL
	}
	for i := f.chunkAt(int64(off)); i < len(f.e.Chunks); i++ {
		if f.zero[i] == wantZero {
			return uint64(max(f.offs[i], int64(off))), 0
		}
	}
	if wantZero {
		return uint64(size), 0 // the virtual hole at the end
	}
	return 0, syscall.ENXIO
}
