package fuseview

import (
	"io/fs"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/p2pimg/p2pimg/chunk"
)

// unixMode turns a manifest mode into the st_mode permission bits.
func unixMode(m fs.FileMode) uint32 {
	out := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		out |= syscall.S_ISUID
	}
	if m&fs.ModeSetgid != 0 {
		out |= syscall.S_ISGID
	}
	if m&fs.ModeSticky != 0 {
		out |= syscall.S_ISVTX
	}
	return out
}

// fill sets the attributes every kind of entry shares.
func fill(out *fuse.Attr, e *chunk.Entry, typ uint32) {
	out.Mode = typ
	if e == nil { // the root
		out.Mode |= 0o755
		return
	}
	out.Mode |= unixMode(e.Mode)
	out.Uid, out.Gid = e.UID, e.GID
	t := time.Unix(0, e.MTime)
	out.SetTimes(&t, &t, &t)
	out.Blksize = 4096
}
