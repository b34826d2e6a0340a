package fetch

import (
	"slices"

	"github.com/p2pimg/p2pimg/node/xchg"
)

// noteLog is the changes of one fetch, in order, for the peers watching
// it. Each watcher reads from its own place; what every watcher has read
// is dropped, so the log holds only what the slowest watcher has yet to
// send, not every note of the fetch (about 48 bytes a chunk: 80 MB for a
// 100 GiB layer). A watcher that starts later begins from a snapshot of
// the fetch, not from the log. The caller holds the fetch's lock.
type noteLog struct {
	notes   []xchg.Note
	base    int         // the place of notes[0] among every note of the fetch
	readers map[int]int // a watcher's next place to read
	nextID  int
}

// trimAt is how many read notes the log keeps before it drops them.
const trimAt = 1024

func (l *noteLog) add(n xchg.Note) { l.notes = append(l.notes, n) }

// join adds a watcher that reads from the end of the log: its id.
func (l *noteLog) join() int {
	if l.readers == nil {
		l.readers = map[int]int{}
	}
	l.nextID++
	l.readers[l.nextID] = l.base + len(l.notes)
	return l.nextID
}

// read is what watcher id has not read yet. The slice stays valid outside
// the lock: the log never writes where it handed out notes.
func (l *noteLog) read(id int) []xchg.Note {
	ns := l.notes[l.readers[id]-l.base:]
	l.readers[id] = l.base + len(l.notes)
	l.trim()
	return slices.Clip(ns)
}

// leave removes watcher id.
func (l *noteLog) leave(id int) {
	delete(l.readers, id)
	l.trim()
}

// trim drops the notes every watcher has read, once they are at least
// trimAt and half the log (so each note is copied about once).
func (l *noteLog) trim() {
	low := l.base + len(l.notes)
	for _, at := range l.readers {
		low = min(low, at)
	}
	k := low - l.base
	if k < trimAt || k < len(l.notes)/2 {
		return
	}
	l.notes = slices.Clone(l.notes[k:]) // a new array: watchers may hold the old one
	l.base = low
}
