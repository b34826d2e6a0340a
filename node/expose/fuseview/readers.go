package fuseview

import "sync"

// readers reads chunks side by side on a few long-lived goroutines. A
// goroutine started per chunk grew its stack through the store's read
// path every time: a tenth of the daemon's CPU on a cold sequential read.
type readers struct {
	jobs chan func()
	wg   sync.WaitGroup
}

// readerCount bounds the chunk reads of one view in flight beside the
// FUSE server's own goroutines (a 1 MiB read of 64 KiB chunks is 16).
const readerCount = 16

func startReaders(n int) *readers {
	r := &readers{jobs: make(chan func())}
	for range n {
		r.wg.Go(func() {
			for fn := range r.jobs {
				fn()
			}
		})
	}
	return r
}

// try runs fn on an idle reader and reports whether one took it; when
// every reader is busy the caller runs fn itself.
func (r *readers) try(fn func()) bool {
	select {
	case r.jobs <- fn:
		return true
	default:
		return false
	}
}

// stop ends the readers once no read can reach them.
func (r *readers) stop() {
	close(r.jobs)
	r.wg.Wait()
}
