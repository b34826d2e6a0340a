package chunk

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
	"github.com/zeebo/blake3"

	"github.com/p2pimg/p2pimg/chunk/internal/sha256x16"
)

// Errors shared by every store and decoder in the system.
var (
	// ErrNotFound: the store has no chunk, layer or record by that id.
	ErrNotFound = errors.New("not found")
	// ErrHashMismatch: data does not hash to the content id it came with.
	ErrHashMismatch = errors.New("hash mismatch")
	// ErrCorrupt: stored bytes no longer match what was written.
	ErrCorrupt = errors.New("corrupt on disk (run `p2pimg verify`)")
	// ErrBadCID: a content id that is not a CIDv1 raw chunk id with a supported hash.
	ErrBadCID = errors.New("not a chunk content id")
	// ErrNoSpace: a write was refused before it started, for lack of free
	// space on the store's disk.
	ErrNoSpace = errors.New("not enough free space")
)

// Block is a chunk whose content id is known to match its data: either the id
// was computed here (Sum) or the data was verified against it (Verify). A store
// accepts only Blocks, so nothing unverified can be written.
type Block struct {
	id   cid.Cid
	data []byte
}

// CID returns the block's content id.
func (b Block) CID() cid.Cid { return b.id }

// Data returns the block's bytes; callers must not modify them.
func (b Block) Data() []byte { return b.data }

// Sum hashes data with the multihash code and returns the block.
func Sum(data []byte, hash uint64) (Block, error) {
	id, err := SumCID(data, hash)
	return Block{id: id, data: data}, err
}

// SumCID returns the content id of data under the multihash code.
func SumCID(data []byte, hash uint64) (cid.Cid, error) {
	var d [32]byte
	switch hash {
	case SHA256:
		d = sha256.Sum256(data)
	case BLAKE3:
		d = blake3.Sum256(data)
	default:
		return cid.Undef, fmt.Errorf("unsupported hash 0x%x", hash)
	}
	return cidOf(d, hash)
}

// cidOf makes the chunk content id of a digest.
func cidOf(d [32]byte, hash uint64) (cid.Cid, error) {
	m, err := mh.Encode(d[:], hash)
	if err != nil {
		return cid.Undef, err
	}
	return cid.NewCidV1(cid.Raw, m), nil
}

// CheckCID reports whether id can name a chunk: CIDv1, raw codec, sha2-256 or
// blake3 with a 32-byte digest.
func CheckCID(id cid.Cid) error {
	if !id.Defined() {
		return fmt.Errorf("%w: undefined", ErrBadCID)
	}
	if id.Version() != 1 || id.Type() != cid.Raw {
		return fmt.Errorf("%w: %s is not CIDv1 raw", ErrBadCID, id)
	}
	pre := id.Prefix()
	if (pre.MhType != SHA256 && pre.MhType != BLAKE3) || pre.MhLength != 32 {
		return fmt.Errorf("%w: %s uses hash 0x%x/%d", ErrBadCID, id, pre.MhType, pre.MhLength)
	}
	return nil
}

// Verify checks that data hashes to id and returns the verified block.
func Verify(id cid.Cid, data []byte) (Block, error) {
	bs, err := VerifyMany([]cid.Cid{id}, [][]byte{data})
	if err != nil {
		return Block{}, err
	}
	return bs[0], nil
}

// VerifyMany checks that data[i] hashes to ids[i] for every i and returns
// the verified blocks, in order. The sha2-256 chunks are hashed together
// (sixteen side by side on CPUs with AVX-512, several times faster than one
// by one), so a fetcher verifies a batch with one call. It fails at the first
// chunk that does not match, naming it, and then returns no block.
func VerifyMany(ids []cid.Cid, data [][]byte) ([]Block, error) {
	if len(ids) != len(data) {
		return nil, fmt.Errorf("verify: %d chunk ids for %d chunks", len(ids), len(data))
	}
	hashes := make([]uint64, len(ids))
	var shaMsgs [][]byte
	for i, id := range ids {
		if err := CheckCID(id); err != nil {
			return nil, err
		}
		if hashes[i] = id.Prefix().MhType; hashes[i] == SHA256 {
			shaMsgs = append(shaMsgs, data[i])
		}
	}
	sums := make([][32]byte, len(shaMsgs))
	sha256x16.Sum256Many(shaMsgs, sums)
	blocks := make([]Block, len(ids))
	k := 0
	for i, id := range ids {
		var got cid.Cid
		var err error
		if hashes[i] == SHA256 {
			got, err = cidOf(sums[k], SHA256)
			k++
		} else {
			got, err = SumCID(data[i], hashes[i])
		}
		if err != nil {
			return nil, err
		}
		if !got.Equals(id) {
			return nil, fmt.Errorf("chunk %s: %w (data hashes to %s)", id, ErrHashMismatch, got)
		}
		blocks[i] = Block{id: id, data: data[i]}
	}
	return blocks, nil
}

// zeros is read-only: a run of zero bytes to compare against.
var zeros = make([]byte, 64<<10)

// IsZero reports whether every byte of b is zero. It returns at the first
// non-zero 64 KiB stretch, so it is cheap on ordinary data.
func IsZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeros))
		if b[0] != 0 || !bytes.Equal(b[:n], zeros[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// AppendTo copies the block's data onto the end of buf and returns the
// grown buffer with a Block over the copy. The copy holds the same bytes, so
// it stays verified; callers use it to keep a chunk past a reused buffer.
func (b Block) AppendTo(buf []byte) ([]byte, Block) {
	start := len(buf)
	buf = append(buf, b.data...)
	return buf, Block{id: b.id, data: buf[start:len(buf):len(buf)]}
}
