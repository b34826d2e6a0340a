// Package notify is the daemon's one "look again soon" signal: a service
// that changed something pokes another, which wakes once however many
// pokes arrived meanwhile. It never blocks the poker and never queues more
// than one wake-up.
package notify

// Signal coalesces pokes into at most one pending wake-up. The zero value
// is not usable: make one with New.
type Signal struct{ c chan struct{} }

// New returns a Signal with no wake-up pending.
func New() *Signal { return &Signal{c: make(chan struct{}, 1)} }

// Notify asks the waiter to look again; it never blocks. Safe on a nil
// Signal (nothing listens).
func (s *Signal) Notify() {
	if s == nil {
		return
	}
	select {
	case s.c <- struct{}{}:
	default:
	}
}

// C is where the waiter receives its wake-ups.
func (s *Signal) C() <-chan struct{} { return s.c }
