package fetch

import (
	"iter"
	"math/bits"
)

// bitset mirrors a []bool of chunk indices 64 to a word, so that the
// scheduler finds the chunks a peer has and this host lacks a word at a
// time instead of one chunk at a time: a pick ran on every answer from
// every peer, and its scans of every chunk were a tenth of a fetcher's CPU
// with 16 peers.
type bitset []uint64

func newBitset(bs []bool) bitset {
	s := make(bitset, (len(bs)+63)/64)
	for i, b := range bs {
		if b {
			s.set(i)
		}
	}
	return s
}

func (s bitset) set(i int)   { s[i>>6] |= 1 << (i & 63) }
func (s bitset) clear(i int) { s[i>>6] &^= 1 << (i & 63) }

// wanted yields, in the order of a scan of 0..n-1 that starts at from and
// wraps around, the chunks has holds and have does not. Neither may change
// while it runs.
func wanted(has, have bitset, from int) iter.Seq[int] {
	return func(yield func(int) bool) {
		words := len(has)
		if words == 0 {
			return
		}
		w0, b0 := from>>6, uint(from&63)
		if w0 >= words {
			w0, b0 = 0, 0
		}
		// The first word's bits from b0 on, the words after it, the words
		// before it, then the first word's bits below b0.
		for k := 0; k <= words; k++ {
			w := (w0 + k) % words
			x := has[w] &^ have[w]
			switch {
			case k == 0:
				x &= ^uint64(0) << b0
			case k == words:
				x &= 1<<b0 - 1
			}
			for x != 0 {
				if !yield(w<<6 + bits.TrailingZeros64(x)) {
					return
				}
				x &= x - 1
			}
		}
	}
}
