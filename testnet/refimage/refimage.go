// Package refimage writes the reference workloads of the project's tests and
// benchmarks: a VM disk image of random data with repeated regions and zero
// runs, and its updates (clustered changes plus an insertion, or scattered
// 4 KiB writes). Everything is derived from a seed, so every run and every
// host sees the same bytes. It never touches the network or a store.
package refimage

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
)

// Update is a kind of change applied to a base image.
type Update int

const (
	// Clustered changes 1% of the bytes in a few clustered extents and inserts
	// 1 MiB in the middle.
	Clustered Update = iota
	// Scattered changes 1% of the bytes as 4 KiB-aligned 4 KiB writes.
	Scattered
)

func (u Update) String() string {
	if u == Clustered {
		return "clustered 1% + 1 MiB insert"
	}
	return "scattered 1% 4 KiB writes"
}

// filler produces pseudo-random bytes quickly.
type filler struct{ r *rand.PCG }

func newFiller(seed uint64) filler { return filler{rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)} }

func (f filler) fill(b []byte) {
	for len(b) >= 8 {
		binary.LittleEndian.PutUint64(b, f.r.Uint64())
		b = b[8:]
	}
	for i := range b {
		b[i] = byte(f.r.Uint64())
	}
}

// Write writes a base image of size bytes: extents of 64 KiB to 4 MiB that
// are fresh random data (70%), a repeat of one of 16 earlier 1 MiB templates
// (15%, at unaligned offsets) or zeros (15%).
func Write(w io.Writer, size int64, seed uint64) error {
	f := newFiller(seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	templates := make([][]byte, 16)
	for i := range templates {
		templates[i] = make([]byte, 1<<20)
		f.fill(templates[i])
	}
	buf := make([]byte, 4<<20)
	bw := bufio.NewWriterSize(w, 1<<20)
	for written := int64(0); written < size; {
		n := int64(64<<10 + rng.IntN(4<<20-64<<10))
		n = min(n, size-written)
		ext := buf[:n]
		switch k := rng.IntN(100); {
		case k < 70:
			f.fill(ext)
		case k < 85:
			t := templates[rng.IntN(len(templates))]
			for i := 0; i < len(ext); i += len(t) {
				copy(ext[i:], t)
			}
		default:
			clear(ext)
		}
		if _, err := bw.Write(ext); err != nil {
			return err
		}
		written += n
	}
	return bw.Flush()
}

type edit struct{ off, n int64 }

// edits lists the overwritten extents of an update of a size-byte image,
// sorted, and where 1 MiB is inserted (-1 for none).
func edits(size int64, u Update, seed uint64) ([]edit, int64) {
	rng := rand.New(rand.NewPCG(seed, 2))
	budget := size / 100
	var es []edit
	insert := int64(-1)
	switch u {
	case Clustered:
		const clusters = 8
		per := budget / clusters
		for range clusters {
			es = append(es, edit{rng.Int64N(size - per), per})
		}
		insert = size / 2
	case Scattered:
		const blk = 4 << 10
		for range budget / blk {
			es = append(es, edit{rng.Int64N(size/blk) * blk, blk})
		}
	}
	slices.SortFunc(es, func(a, b edit) int { return int(a.off - b.off) })
	return es, insert
}

// WriteUpdate reads the base image and writes the update u of it to w.
func WriteUpdate(w io.Writer, base io.Reader, size int64, u Update, seed uint64) error {
	es, insert := edits(size, u, seed)
	f := newFiller(seed ^ 0xabcdef)
	bw := bufio.NewWriterSize(w, 1<<20)
	buf := make([]byte, 1<<20)
	var pos int64
	for pos < size {
		n := int64(len(buf))
		n = min(n, size-pos)
		if insert >= pos && insert < pos+n {
			n = insert - pos
			if n == 0 {
				ins := make([]byte, 1<<20)
				f.fill(ins)
				if _, err := bw.Write(ins); err != nil {
					return err
				}
				insert = -1
				continue
			}
		}
		b := buf[:n]
		if _, err := io.ReadFull(base, b); err != nil {
			return fmt.Errorf("read base at %d: %w", pos, err)
		}
		for _, e := range es {
			lo, hi := max(e.off, pos), min(e.off+e.n, pos+n)
			if lo < hi {
				f.fill(b[lo-pos : hi-pos])
			}
		}
		if _, err := bw.Write(b); err != nil {
			return err
		}
		pos += n
	}
	return bw.Flush()
}

// Files writes the base image and both updates into dir and returns their
// paths: base, clustered, scattered.
func Files(dir string, size int64, seed uint64) (base, clustered, scattered string, err error) {
	base = dir + "/base.img"
	clustered = dir + "/update-clustered.img"
	scattered = dir + "/update-scattered.img"
	if err = writeFile(base, func(w io.Writer) error { return Write(w, size, seed) }); err != nil {
		return
	}
	for _, u := range []struct {
		path string
		u    Update
	}{{clustered, Clustered}, {scattered, Scattered}} {
		if err = writeFile(u.path, func(w io.Writer) error {
			in, err := os.Open(base)
			if err != nil {
				return err
			}
			defer in.Close()
			return WriteUpdate(w, in, size, u.u, seed)
		}); err != nil {
			return
		}
	}
	return
}

func writeFile(path string, fn func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := fn(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
