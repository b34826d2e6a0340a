// Package disk reports how much room a file system has, for the checks
// made before a write (the store's reserve, import limits) and for what
// a host shows of its disk. It only reads; it never reserves anything.
package disk

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Usage is a file system's size and the room left in it.
type Usage struct {
	// Free is what an unprivileged writer may still use (the blocks kept
	// for root are not counted).
	Free int64
	// Total is the file system's size.
	Total int64
}

// Space returns the usage of the file system that holds path; an error
// names path.
func Space(path string) (Usage, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return Usage{}, fmt.Errorf("free space of %s: %w", path, err)
	}
	return Usage{Free: int64(st.Bavail) * st.Bsize, Total: int64(st.Blocks) * st.Bsize}, nil
}
