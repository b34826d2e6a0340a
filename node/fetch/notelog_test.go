package fetch

import (
	"testing"

	"github.com/p2pimg/p2pimg/node/xchg"
)

func TestNoteLogDropsWhatEveryWatcherRead(t *testing.T) {
	t.Parallel()
	var l noteLog
	add := func(n int) {
		for i := range n {
			l.add(xchg.Note{Index: i})
		}
	}
	add(10) // before any watcher: nobody reads these
	a := l.join()
	b := l.join()
	add(3 * trimAt)
	if got := len(l.read(a)); got != 3*trimAt {
		t.Fatalf("a read %d notes, want %d", got, 3*trimAt)
	}
	if len(l.notes) < 3*trimAt {
		t.Fatalf("log kept %d notes while b has read none of %d", len(l.notes), 3*trimAt)
	}
	held := l.read(b) // b holds these while the log drops them
	if len(held) != 3*trimAt || len(l.notes) != 0 {
		t.Fatalf("b read %d, log kept %d; want %d and 0", len(held), len(l.notes), 3*trimAt)
	}
	add(5)
	for k, n := range held {
		if n.Index != k {
			t.Fatalf("note %d of a read slice changed to %d after the log was trimmed", k, n.Index)
		}
	}
	l.leave(b)
	if got := l.read(a); len(got) != 5 {
		t.Fatalf("a read %d new notes, want 5", len(got))
	}
	c := l.join()
	add(2)
	if got := l.read(c); len(got) != 2 {
		t.Fatalf("a watcher that joined late read %d notes, want the 2 after it joined", len(got))
	}
}
