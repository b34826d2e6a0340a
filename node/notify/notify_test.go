package notify

import "testing"

func TestSignalCoalesces(t *testing.T) {
	s := New()
	for range 3 {
		s.Notify()
	}
	<-s.C()
	select {
	case <-s.C():
		t.Fatal("three pokes woke the waiter twice")
	default:
	}
	var none *Signal
	none.Notify() // must not panic
}
