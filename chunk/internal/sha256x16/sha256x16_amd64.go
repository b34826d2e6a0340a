//go:build amd64 && gc && !noasm

package sha256x16

import (
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"hash"
	"math/bits"
	"slices"
	"sync"
	_ "unsafe" // go:linkname

	_ "github.com/minio/sha256-simd" // links the kernel below
	"golang.org/x/sys/cpu"
)

// sha256X16Avx512 advances sixteen SHA-256 states, held transposed in
// digests (word w of lane i is the little-endian uint32 at (w*16+i)*4), by
// len(mask) rounds: in round r, lane i hashes the 64-byte block
// inputs[i][64r':64r'+64], where r' counts the earlier rounds whose mask has
// bit i, when bit i of mask[r] is set. It adds no padding.
//
//go:linkname sha256X16Avx512 github.com/minio/sha256-simd.sha256X16Avx512
//go:noescape
func sha256X16Avx512(digests *[512]byte, scratch *[512]byte, table *[512]uint64, mask []uint64, inputs [16][]byte)

var k = [64]uint32{
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}

var iv = [8]uint32{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19}

// table is k with each constant repeated for sixteen 32-bit lanes.
var table = func() (t [512]uint64) {
	for r, c := range k {
		for j := range 8 {
			t[r*8+j] = uint64(c)<<32 | uint64(c)
		}
	}
	return t
}()

const (
	// minMsgs: fewer messages than this are hashed one by one (the lanes
	// would mostly idle).
	minMsgs = 4
	// tailLanes: once no message waits and at most this many lanes are
	// still busy, they finish one by one with the SHA extensions, which
	// beat a mostly idle sixteen-lane round.
	tailLanes = 5
	// maxRounds bounds one kernel call, and so the mask buffer.
	maxRounds = 1024
)

// Accelerated reports whether Sum256Many runs sixteen lanes at once.
func Accelerated() bool { return accelerated() }

var accelerated = sync.OnceValue(func() bool {
	if !cpu.X86.HasAVX512F || !cpu.X86.HasAVX512DQ || !cpu.X86.HasAVX512BW || !cpu.X86.HasAVX512VL {
		return false
	}
	return selfTest()
})

// selfTest hashes messages of many lengths through the lanes and compares
// every digest with crypto/sha256.
func selfTest() bool {
	data := make([]byte, 40<<10)
	for i := range data {
		data[i] = byte(i*131 + i>>9)
	}
	var msgs [][]byte
	for n := 0; n < 40; n++ {
		msgs = append(msgs, data[n*7:n*7+n*997%len(data[n*7:])])
	}
	out := make([][32]byte, len(msgs))
	var s state
	s.sum(msgs, out)
	for i, m := range msgs {
		if out[i] != sha256.Sum256(m) {
			return false
		}
	}
	return true
}

// Sum256Many sets out[i] to the SHA-256 of msgs[i]; out must be at least as
// long as msgs. It is safe for concurrent use.
func Sum256Many(msgs [][]byte, out [][32]byte) {
	out = out[:len(msgs)]
	if len(msgs) < minMsgs || !accelerated() {
		sumEach(msgs, out)
		return
	}
	s := pool.Get().(*state)
	s.sum(msgs, out)
	pool.Put(s)
}

var pool = sync.Pool{New: func() any { return new(state) }}

// state is one call's working memory, reused through pool.
type state struct {
	digests, scratch [512]byte
	mask             [maxRounds]uint64
	order            []int
	h                hash.Hash
	buf              []byte
}

type lane struct {
	msg  int // index in msgs, -1 when idle
	pos  int // bytes hashed so far (a multiple of 64)
	body int // the message's whole 64-byte blocks, in bytes
}

func (s *state) sum(msgs [][]byte, out [][32]byte) {
	// Longest first: the lanes then finish close together.
	s.order = s.order[:0]
	for i, m := range msgs {
		if len(m) < 64 {
			out[i] = sha256.Sum256(m)
			continue
		}
		s.order = append(s.order, i)
	}
	slices.SortFunc(s.order, func(a, b int) int { return len(msgs[b]) - len(msgs[a]) })
	var lanes [16]lane
	next := 0
	fill := func(i int) {
		lanes[i] = lane{msg: -1}
		if next == len(s.order) {
			return
		}
		m := s.order[next]
		next++
		lanes[i] = lane{msg: m, body: len(msgs[m]) &^ 63}
		for w, v := range iv {
			binary.LittleEndian.PutUint32(s.digests[(w*16+i)*4:], v)
		}
	}
	for i := range lanes {
		fill(i)
	}
	for {
		var active uint64
		steps := maxRounds
		for i, l := range lanes {
			if l.msg >= 0 {
				active |= 1 << i
				steps = min(steps, (l.body-l.pos)/64)
			}
		}
		busy := bits.OnesCount64(active)
		if busy == 0 {
			return
		}
		if next == len(s.order) && busy <= tailLanes {
			for i, l := range lanes {
				if l.msg >= 0 {
					out[l.msg] = s.finish(i, msgs[l.msg], l.pos)
				}
			}
			return
		}
		var in [16][]byte
		for i, l := range lanes {
			if l.msg >= 0 {
				in[i] = msgs[l.msg][l.pos : l.pos+steps*64]
			}
		}
		mask := s.mask[:steps]
		for r := range mask {
			mask[r] = active
		}
		sha256X16Avx512(&s.digests, &s.scratch, &table, mask, in)
		for i := range lanes {
			l := &lanes[i]
			if l.msg < 0 {
				continue
			}
			if l.pos += steps * 64; l.pos == l.body {
				out[l.msg] = s.finish(i, msgs[l.msg], l.pos)
				fill(i)
			}
		}
	}
}

// finish hands lane i's state, after pos bytes of m, to crypto/sha256
// (through its documented binary state format), which hashes the rest of m
// and pads it.
func (s *state) finish(i int, m []byte, pos int) [32]byte {
	if s.h == nil {
		s.h = sha256.New()
	}
	b := append(s.buf[:0], "sha\x03"...)
	for w := range 8 {
		b = binary.BigEndian.AppendUint32(b, binary.LittleEndian.Uint32(s.digests[(w*16+i)*4:]))
	}
	b = append(b, make([]byte, 64)...) // no partial block: pos is a multiple of 64
	b = binary.BigEndian.AppendUint64(b, uint64(pos))
	s.buf = b
	if err := s.h.(encoding.BinaryUnmarshaler).UnmarshalBinary(b); err != nil {
		panic("sha256x16: crypto/sha256 refused its own state format: " + err.Error())
	}
	s.h.Write(m[pos:])
	var d [32]byte
	s.h.Sum(d[:0])
	return d
}
