package activate

import (
	"slices"
	"testing"
)

// A trace decodes to what was encoded; hostile bytes (from a peer) give
// an error, never an index outside the layer or a repeat.
func FuzzDecodeTrace(f *testing.F) {
	f.Add(encodeTrace([]int{3, 0, 70000, 1}), 70001)
	f.Add([]byte(traceMagic+"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"), 10)
	f.Add(encodeTrace([]int{1, 1}), 2)
	f.Add([]byte("not a trace"), 5)
	f.Fuzz(func(t *testing.T, b []byte, n int) {
		n = max(0, min(n, 1<<20))
		idx, err := decodeTrace(b, n)
		if err != nil {
			return
		}
		seen := map[int]bool{}
		for _, i := range idx {
			if i < 0 || i >= n || seen[i] {
				t.Fatalf("index %d of %d accepted (repeat: %v)", i, n, seen[i])
			}
			seen[i] = true
		}
		if again, err := decodeTrace(encodeTrace(idx), n); err != nil || !slices.Equal(again, idx) {
			t.Fatalf("round trip: %v, %v", again, err)
		}
	})
}
