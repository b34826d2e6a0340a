package chunk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io/fs"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
)

func randBytes(seed uint64, n int) []byte {
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	b := make([]byte, n)
	r.Read(b)
	return b
}

type piece struct {
	id   cid.Cid
	off  int64
	n    int
	zero bool
}

func split(t testing.TB, data []byte, p Params) ([]piece, []byte) {
	t.Helper()
	var out []piece
	var joined bytes.Buffer
	err := Split(context.Background(), bytes.NewReader(data), p, func(c Chunk) error {
		out = append(out, piece{c.CID(), c.Offset, len(c.Data()), c.Zero})
		joined.Write(c.Data())
		if _, err := Verify(c.CID(), c.Data()); err != nil {
			t.Errorf("chunk at %d does not verify: %v", c.Offset, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out, joined.Bytes()
}

func TestSplitRoundTrip(t *testing.T) {
	t.Parallel()
	blake, _ := NewParams(CDC, 8<<10, BLAKE3)
	fixed, _ := NewParams(Fixed, 64<<10, SHA256)
	small, _ := NewParams(CDC, 4<<10, SHA256)
	for _, tc := range []struct {
		name string
		p    Params
		n    int
	}{
		{"empty", DefaultParams(), 0},
		{"one byte", DefaultParams(), 1},
		{"below min", DefaultParams(), 10 << 10},
		{"cdc 5 MiB", DefaultParams(), 5<<20 + 17},
		{"cdc blake3", blake, 3<<20 + 1},
		{"cdc 4K", small, 2 << 20},
		{"fixed", fixed, 3<<20 + 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			data := randBytes(uint64(tc.n), tc.n)
			pieces, joined := split(t, data, tc.p)
			if !bytes.Equal(joined, data) {
				t.Fatal("chunks do not join to the input")
			}
			var off int64
			for i, pc := range pieces {
				if pc.off != off {
					t.Fatalf("chunk %d offset %d, want %d", i, pc.off, off)
				}
				off += int64(pc.n)
				last := i == len(pieces)-1
				if pc.n > tc.p.MaxSize() || (!last && tc.p.Mode == CDC && pc.n < int(tc.p.Min)) ||
					(!last && tc.p.Mode == Fixed && pc.n != int(tc.p.Avg)) {
					t.Fatalf("chunk %d has size %d outside %s", i, pc.n, tc.p)
				}
				if got := pc.id.Prefix().MhType; got != tc.p.Hash {
					t.Fatalf("chunk %d hash 0x%x, want 0x%x", i, got, tc.p.Hash)
				}
			}
			if tc.n > 4<<20 && tc.p.Mode == CDC {
				avg := tc.n / len(pieces)
				if avg < int(tc.p.Avg)/2 || avg > int(tc.p.Avg)*2 {
					t.Errorf("average chunk %d far from %d", avg, tc.p.Avg)
				}
			}
		})
	}
}

// An insertion in the middle of a stream changes at most two chunk
// boundaries: the chunks before it and, after resynchronising, those after
// it are the same.
func TestInsertionMovesAtMostTwoBoundaries(t *testing.T) {
	t.Parallel()
	data := randBytes(7, 8<<20)
	before, _ := split(t, data, DefaultParams())
	for _, insLen := range []int{1, 100, 4096, 1 << 20} {
		at := len(data)/2 + insLen
		edited := append(append(append([]byte{}, data[:at]...), randBytes(uint64(insLen), insLen)...), data[at:]...)
		after, _ := split(t, edited, DefaultParams())
		old := map[cid.Cid]bool{}
		for _, p := range before {
			old[p.id] = true
		}
		newChunks, newBytes := 0, 0
		for _, p := range after {
			if !old[p.id] {
				newChunks++
				newBytes += p.n
			}
		}
		// The insertion's own bytes plus the chunk it lands in and at most one more.
		if newChunks > 2+insLen/int(DefaultParams().Min) || newBytes > insLen+2*DefaultParams().MaxSize() {
			t.Errorf("insert %d bytes: %d new chunks, %d new bytes", insLen, newChunks, newBytes)
		}
	}
}

// statReader is an input that tells its size, wrongly when it likes (a
// file that grew or shrank since).
type statReader struct {
	*bytes.Reader
	size int64
}

func (r statReader) Stat() (fs.FileInfo, error) { return sizeInfo(r.size), nil }

type sizeInfo int64

func (s sizeInfo) Name() string       { return "f" }
func (s sizeInfo) Size() int64        { return int64(s) }
func (s sizeInfo) Mode() fs.FileMode  { return 0o644 }
func (s sizeInfo) ModTime() time.Time { return time.Time{} }
func (s sizeInfo) IsDir() bool        { return false }
func (s sizeInfo) Sys() any           { return nil }

// An input that tells its size gets a smaller window; the chunks are the
// same whatever it tells, true or not.
func TestSplitSizeHint(t *testing.T) {
	t.Parallel()
	fixed, _ := NewParams(Fixed, 64<<10, SHA256)
	for _, p := range []Params{DefaultParams(), fixed} {
		for _, n := range []int{0, 1, 5000, p.MaxSize(), 2*p.MaxSize() + 1, 5 << 20} {
			data := randBytes(uint64(n), n)
			want, _ := split(t, data, p)
			for _, told := range []int64{int64(n), 0, 10, int64(n) / 2, int64(n) * 3} {
				var got []piece
				err := Split(context.Background(), statReader{bytes.NewReader(data), told}, p, func(c Chunk) error {
					got = append(got, piece{c.CID(), c.Offset, len(c.Data()), c.Zero})
					return nil
				})
				if err != nil || !slices.Equal(got, want) {
					t.Fatalf("%s, %d bytes, told %d: %d chunks (%v), want %d", p, n, told, len(got), err, len(want))
				}
			}
		}
	}
	if w := windowSize(statReader{size: 10}, DefaultParams()); w != 2*DefaultParams().MaxSize() {
		t.Fatalf("window for 10 bytes: %d, want %d", w, 2*DefaultParams().MaxSize())
	}
	if w := windowSize(bytes.NewReader(nil), DefaultParams()); w != readSize {
		t.Fatalf("window for an input of unknown size: %d, want %d", w, readSize)
	}
}

func TestZeroChunks(t *testing.T) {
	t.Parallel()
	data := make([]byte, 4<<20)
	copy(data[1<<20:], randBytes(3, 1<<20))
	pieces, joined := split(t, data, DefaultParams())
	if !bytes.Equal(joined, data) {
		t.Fatal("round trip")
	}
	zeroIDs := map[cid.Cid]bool{}
	for _, p := range pieces {
		if p.zero {
			zeroIDs[p.id] = true
			if !IsZero(data[p.off : p.off+int64(p.n)]) {
				t.Fatalf("chunk at %d marked zero", p.off)
			}
		}
	}
	if len(zeroIDs) == 0 || len(zeroIDs) > 3 {
		t.Fatalf("zero runs gave %d distinct zero chunks", len(zeroIDs))
	}
}

func TestVerifyRejects(t *testing.T) {
	t.Parallel()
	b, _ := Sum([]byte("hello"), SHA256)
	if _, err := Verify(b.CID(), []byte("hellp")); err == nil {
		t.Fatal("verify accepted altered data")
	}
	if _, err := Verify(cid.NewCidV0(b.CID().Hash()), []byte("hello")); err == nil {
		t.Fatal("verify accepted a CIDv0")
	}
}

func TestVerifyMany(t *testing.T) {
	t.Parallel()
	var ids []cid.Cid
	var data [][]byte
	for i := range 40 {
		d := bytes.Repeat([]byte{byte(i), byte(i >> 3), 7}, 1000*i+i)
		h := uint64(SHA256)
		if i%5 == 0 {
			h = BLAKE3
		}
		b, err := Sum(d, h)
		if err != nil {
			t.Fatal(err)
		}
		ids, data = append(ids, b.CID()), append(data, d)
	}
	blocks, err := VerifyMany(ids, data)
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range blocks {
		if !b.CID().Equals(ids[i]) || !bytes.Equal(b.Data(), data[i]) {
			t.Fatalf("block %d is not chunk %d", i, i)
		}
	}
	for _, bad := range []int{0, 7, 39} { // blake3, sha2-256, the last
		alt := slices.Clone(data)
		alt[bad] = append([]byte{1}, data[bad]...)
		_, err := VerifyMany(ids, alt)
		if !errors.Is(err, ErrHashMismatch) || !strings.Contains(err.Error(), ids[bad].String()) {
			t.Errorf("chunk %d altered: err %v, want a hash mismatch naming it", bad, err)
		}
	}
	if _, err := VerifyMany(ids[:3], data[:2]); err == nil {
		t.Error("verify accepted 3 ids for 2 chunks")
	}
	if _, err := VerifyMany([]cid.Cid{cid.NewCidV0(ids[1].Hash())}, data[1:2]); !errors.Is(err, ErrBadCID) {
		t.Errorf("CIDv0: err %v, want ErrBadCID", err)
	}
}

func TestParams(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		p  Params
		ok bool
	}{
		{DefaultParams(), true},
		{Params{Mode: Fixed, Avg: 64 << 10, Hash: SHA256}, true},
		{Params{Mode: Fixed, Avg: 3000, Hash: SHA256}, false},
		{Params{Mode: CDC, Min: 16 << 10, Avg: 60000, Max: 256 << 10, Hash: SHA256}, false},
		{Params{Mode: CDC, Min: 16 << 10, Avg: 64 << 10, Max: 32 << 10, Hash: SHA256}, false},
		{Params{Mode: "zip", Avg: 64 << 10, Hash: SHA256}, false},
		{Params{Mode: CDC, Min: 16 << 10, Avg: 64 << 10, Max: 256 << 10, Hash: 0x11}, false},
	} {
		if err := tc.p.Validate(); (err == nil) != tc.ok {
			t.Errorf("%+v: err %v, want ok=%v", tc.p, err, tc.ok)
		}
	}
	for in, want := range map[string]uint32{"64K": 64 << 10, "1M": 1 << 20, "4096": 4096, "8KiB": 8 << 10} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "-1", "9M", "lots"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
}

var benchData = randBytes(99, 256<<20)

func benchSplit(b *testing.B, p Params) {
	b.SetBytes(int64(len(benchData)))
	for b.Loop() {
		if err := Split(context.Background(), bytes.NewReader(benchData), p, func(Chunk) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSplitCDCSHA256(b *testing.B) { benchSplit(b, DefaultParams()) }
func BenchmarkSplitFixedSHA256(b *testing.B) {
	p, _ := NewParams(Fixed, 64<<10, SHA256)
	benchSplit(b, p)
}
func BenchmarkSplitCDCBLAKE3(b *testing.B) { p, _ := NewParams(CDC, 64<<10, BLAKE3); benchSplit(b, p) }

func BenchmarkCutOnly(b *testing.B) {
	c := newCutter(DefaultParams())
	b.SetBytes(int64(len(benchData)))
	for b.Loop() {
		for d := benchData; len(d) > 0; {
			d = d[c.cut(d):]
		}
	}
}

func BenchmarkSHA256OneGoroutine(b *testing.B) {
	b.SetBytes(int64(len(benchData)))
	for b.Loop() {
		sha256.Sum256(benchData)
	}
}

// refCut is the plain byte-at-a-time FastCDC loop that cutter.cut must match.
func refCut(c *cutter, b []byte) int {
	n := len(b)
	if n <= c.min {
		return n
	}
	n = min(n, c.max)
	var h uint64
	for i := c.min; i < n; i++ {
		h = (h << 1) + gear[b[i]]
		mask := c.maskS
		if i >= c.avg {
			mask = c.maskL
		}
		if h&mask == 0 {
			return i + 1
		}
	}
	return n
}

func TestCutMatchesReference(t *testing.T) {
	t.Parallel()
	for _, size := range []uint32{4 << 10, 64 << 10} {
		p, _ := NewParams(CDC, size, SHA256)
		c := newCutter(p)
		for seed := range uint64(20) {
			d := randBytes(seed, int(p.Max)*3+int(seed))
			for len(d) > 0 {
				got, want := c.cut(d), refCut(&c, d)
				if got != want {
					t.Fatalf("size %d seed %d: cut %d, reference %d", size, seed, got, want)
				}
				d = d[got:]
			}
		}
	}
}
