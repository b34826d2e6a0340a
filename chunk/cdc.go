package chunk

import "math/bits"

// gear is the FastCDC gear table: 256 pseudo-random 64-bit values. It is part
// of the on-disk format (chunk boundaries depend on it), so it is derived from
// a fixed seed and must never change. Read-only after package init.
var gear = func() (t [256]uint64) {
	x := uint64(0x7032_7069_6d67_0001) // "p2pimg" v1
	for i := range t {
		// splitmix64
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		t[i] = z ^ (z >> 31)
	}
	return t
}()

// cutter finds FastCDC cut points with normalised chunking: a harder mask
// before the average size and an easier one after it, which narrows the
// spread of chunk sizes around the average.
type cutter struct {
	min, avg, max int
	maskS, maskL  uint64
}

func newCutter(p Params) cutter {
	b := bits.TrailingZeros32(p.Avg)
	// High bits of the gear hash depend on the most recent 64 bytes, so the
	// masks take the top bits.
	return cutter{
		min:   int(p.Min),
		avg:   int(p.Avg),
		max:   int(p.Max),
		maskS: ^uint64(0) << (64 - (b + 2)),
		maskL: ^uint64(0) << (64 - (b - 2)),
	}
}

// cut returns the length of the next chunk at the start of b. b must hold at
// least max bytes unless it is the end of the input.
func (c *cutter) cut(b []byte) int {
	n := len(b)
	if n <= c.min {
		return n
	}
	if n > c.max {
		n = c.max
	}
	normal := min(c.avg, n)
	if i, ok := scan(b[c.min:normal], 0, c.maskS); ok {
		return c.min + i
	} else if i, ok := scan(b[normal:n], c.hashAt(b[:normal]), c.maskL); ok {
		return normal + i
	}
	return n
}

// hashAt is the gear hash after the last 64 bytes of b, as scan leaves it
// (the hash forgets everything older: 64 shifts push it out).
func (c *cutter) hashAt(b []byte) uint64 {
	var h uint64
	for _, x := range b[max(len(b)-64, c.min):] {
		h = (h << 1) + gear[x]
	}
	return h
}

// scan rolls the gear hash from h over b and returns how many bytes were
// consumed up to and including the first position where h&mask == 0.
// It takes two bytes a step: the new hash is (h<<2) + (gear[b0]<<1 + gear[b1]),
// whose right-hand side does not depend on h, so the serial chain per two
// bytes is one shift and one add; the hash after the first byte is checked on
// the side, so the cut points are exactly those of the byte-at-a-time loop.
func scan(b []byte, h uint64, mask uint64) (int, bool) {
	i := 0
	for ; i+1 < len(b); i += 2 {
		g0, g1 := gear[b[i]], gear[b[i+1]]
		mid := (h << 1) + g0
		h = (h << 2) + (g0<<1 + g1)
		if mid&mask == 0 {
			return i + 1, true
		}
		if h&mask == 0 {
			return i + 2, true
		}
	}
	if i < len(b) {
		h = (h << 1) + gear[b[i]]
		if h&mask == 0 {
			return i + 1, true
		}
	}
	return 0, false
}
