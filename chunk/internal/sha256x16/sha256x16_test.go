package sha256x16

import (
	"crypto/sha256"
	"math/rand/v2"
	"testing"
)

func TestSum256Many(t *testing.T) {
	t.Logf("accelerated: %v", Accelerated())
	r := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 2<<20)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	for _, tc := range []struct {
		name string
		n    int
		size func() int
	}{
		{"none", 0, nil},
		{"few", 3, func() int { return 1000 }},
		{"tiny", 40, func() int { return r.IntN(130) }},
		{"equal 64K", 16, func() int { return 64 << 10 }},
		{"cdc-like", 64, func() int { return 16<<10 + r.IntN(240<<10) }},
		{"mixed", 200, func() int { return r.IntN(300 << 10) }},
		{"block edges", 50, func() int { return 64 * r.IntN(40) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msgs := make([][]byte, tc.n)
			for i := range msgs {
				n := tc.size()
				off := r.IntN(len(data) - n)
				msgs[i] = data[off : off+n]
			}
			checkSums(t, msgs)
		})
	}
}

// checkSums hashes msgs with Sum256Many and compares with crypto/sha256.
func checkSums(t *testing.T, msgs [][]byte) {
	t.Helper()
	out := make([][32]byte, len(msgs))
	Sum256Many(msgs, out)
	for i, m := range msgs {
		if out[i] != sha256.Sum256(m) {
			t.Fatalf("message %d (%d bytes): wrong digest", i, len(m))
		}
	}
}

func FuzzSum256Many(f *testing.F) {
	f.Add([]byte("abc"), uint8(5))
	f.Fuzz(func(t *testing.T, seed []byte, n uint8) {
		msgs := make([][]byte, int(n)%40)
		for i := range msgs {
			k := (i*len(seed)*31 + i*67) % (len(seed) + 1)
			msgs[i] = seed[:k]
		}
		checkSums(t, msgs)
	})
}

// BenchmarkVerify16 compares hashing a fetch batch of sixteen 64 KiB chunks
// one by one with hashing them together.
func BenchmarkVerify16(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 2))
	msgs := make([][]byte, 16)
	total := 0
	for i := range msgs {
		msgs[i] = make([]byte, 32<<10+r.IntN(64<<10))
		total += len(msgs[i])
	}
	out := make([][32]byte, len(msgs))
	b.Run("one-by-one", func(b *testing.B) {
		b.SetBytes(int64(total))
		for range b.N {
			sumEach(msgs, out)
		}
	})
	b.Run("sixteen-lanes", func(b *testing.B) {
		b.SetBytes(int64(total))
		for range b.N {
			Sum256Many(msgs, out)
		}
	})
}
