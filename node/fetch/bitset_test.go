package fetch

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// wanted yields exactly what the scan it replaces found, in its order.
func TestWantedIsTheScan(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 2, 63, 64, 65, 127, 128, 129, 200, 4096} {
		for range 50 {
			has, have := make([]bool, n), make([]bool, n)
			dense := r.Float64()
			for i := range n {
				has[i], have[i] = r.Float64() < dense, r.Float64() < 0.5
			}
			from := r.IntN(n)
			var want []int
			for j := range n {
				if i := (from + j) % n; has[i] && !have[i] {
					want = append(want, i)
				}
			}
			got := slices.Collect(wanted(newBitset(has), newBitset(have), from))
			if !slices.Equal(got, want) {
				t.Fatalf("n %d from %d: wanted yields %v, the scan finds %v", n, from, got, want)
			}
			hb := newBitset(has)
			if k := r.IntN(n); has[k] {
				hb.clear(k)
				has[k] = false
			} else {
				hb.set(k)
				has[k] = true
			}
			if !slices.Equal(hb, newBitset(has)) {
				t.Fatalf("n %d: set/clear disagree with the slice", n)
			}
		}
	}
}

func BenchmarkPickScan(b *testing.B) {
	const n = 4096
	has, have := make([]bool, n), make([]bool, n)
	for i := range n {
		has[i], have[i] = i%3 == 0, i%2 == 0
	}
	hb, vb := newBitset(have), newBitset(has)
	b.Run("bools", func(b *testing.B) {
		for b.Loop() {
			k := 0
			for i := range n {
				if !have[i] && has[i] && i%16 == 0 {
					k++
				}
			}
			_ = k
		}
	})
	b.Run("bitset", func(b *testing.B) {
		for b.Loop() {
			k := 0
			for i := range wanted(vb, hb, 0) {
				if i%16 == 0 {
					k++
				}
			}
			_ = k
		}
	})
}
