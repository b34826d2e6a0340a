package fuseview

import (
	"sync"

	"golang.org/x/sys/unix"
)

// spaceGuard keeps disk-image writes from taking the last Reserve bytes
// of the delta's disk: the data directory's, where the store, its index
// and the daemon's own records live too (badger, for one, cannot even
// open on a full disk). Asking the file system on every write would cost
// a system call per write, so it asks again only once the writes since
// the last answer could have used half of what was left above the
// reserve: seldom with room to spare, at every write near the limit.
type spaceGuard struct {
	dir     string
	reserve int64

	mu      sync.Mutex
	free    int64 // at the last look
	since   int64 // bytes written since
	checked bool
}

// allow reports whether n more bytes may be written.
func (g *spaceGuard) allow(n int64) bool {
	if g == nil || g.reserve <= 0 {
		return true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.checked || g.since+n >= (g.free-g.reserve)/2 {
		var st unix.Statfs_t
		if err := unix.Statfs(g.dir, &st); err != nil {
			return true // unknown: the write itself will tell
		}
		g.free, g.since, g.checked = int64(st.Bavail)*st.Bsize, 0, true
	}
	if g.free-g.since-n < g.reserve {
		return false
	}
	g.since += n
	return true
}
