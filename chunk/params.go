package chunk

import (
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"strings"

	mh "github.com/multiformats/go-multihash"
)

// Mode is how a layer's files are cut into chunks.
type Mode string

const (
	// CDC cuts at content-defined boundaries (FastCDC), so an insertion moves
	// at most one or two boundaries. The default for trees and most files.
	CDC Mode = "cdc"
	// Fixed cuts aligned blocks of exactly Avg bytes: best for raw disk images,
	// which change in place and never shift.
	Fixed Mode = "fixed"
)

// Hash codes accepted in content ids.
const (
	SHA256 = mh.SHA2_256
	BLAKE3 = mh.BLAKE3
)

// Size limits for chunking parameters.
const (
	MinChunkSize = 1 << 10 // smallest Min any layer may use
	MaxChunkSize = 8 << 20 // largest Max any layer may use (and so any chunk)
)

// Params are the chunking parameters of one layer. They are recorded in the
// manifest: the same bytes with the same Params always give the same chunks.
type Params struct {
	Mode Mode   `cbor:"1,keyasint"`
	Min  uint32 `cbor:"2,keyasint"` // CDC only: no cut before Min bytes
	Avg  uint32 `cbor:"3,keyasint"` // CDC: normalisation point; Fixed: block size
	Max  uint32 `cbor:"4,keyasint"` // CDC only: always cut at Max bytes
	Hash uint64 `cbor:"5,keyasint"` // multihash code: SHA256 or BLAKE3
}

// DefaultParams are the CDC defaults: min 16 KiB, average 64 KiB, max 256 KiB, sha2-256.
func DefaultParams() Params {
	return Params{Mode: CDC, Min: 16 << 10, Avg: 64 << 10, Max: 256 << 10, Hash: SHA256}
}

// NewParams builds the parameters for a mode and an average (CDC) or block
// (fixed) size. CDC uses min = size/4 and max = size*4, as the defaults do.
func NewParams(mode Mode, size uint32, hash uint64) (Params, error) {
	p := Params{Mode: mode, Avg: size, Hash: hash}
	if mode == CDC {
		p.Min, p.Max = size/4, size*4
	}
	return p, p.Validate()
}

// Validate reports what is wrong with p, if anything.
func (p Params) Validate() error {
	switch p.Hash {
	case SHA256, BLAKE3:
	default:
		return fmt.Errorf("chunk params: unsupported hash 0x%x (want sha2-256 or blake3)", p.Hash)
	}
	if p.Avg == 0 || bits.OnesCount32(p.Avg) != 1 {
		return fmt.Errorf("chunk params: size %d is not a power of two", p.Avg)
	}
	switch p.Mode {
	case Fixed:
		if p.Avg < 4<<10 || p.Avg > MaxChunkSize {
			return fmt.Errorf("chunk params: fixed block size %d outside 4 KiB..8 MiB", p.Avg)
		}
		if p.Min != 0 || p.Max != 0 {
			return errors.New("chunk params: fixed mode takes no min or max")
		}
	case CDC:
		if p.Min < MinChunkSize || p.Min >= p.Avg || p.Avg >= p.Max || p.Max > MaxChunkSize {
			return fmt.Errorf("chunk params: cdc sizes min %d avg %d max %d must satisfy 1 KiB <= min < avg < max <= 8 MiB", p.Min, p.Avg, p.Max)
		}
	default:
		return fmt.Errorf("chunk params: unknown mode %q (want cdc or fixed)", p.Mode)
	}
	return nil
}

// MaxSize is the largest chunk these parameters can cut.
func (p Params) MaxSize() int {
	if p.Mode == Fixed {
		return int(p.Avg)
	}
	return int(p.Max)
}

// String is a short human form, such as "cdc 16K/64K/256K sha2-256".
func (p Params) String() string {
	name := mh.Codes[p.Hash]
	if p.Mode == Fixed {
		return fmt.Sprintf("fixed %s %s", sizeString(p.Avg), name)
	}
	return fmt.Sprintf("cdc %s/%s/%s %s", sizeString(p.Min), sizeString(p.Avg), sizeString(p.Max), name)
}

func sizeString(n uint32) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.Itoa(int(n>>20)) + "M"
	case n >= 1<<10 && n%(1<<10) == 0:
		return strconv.Itoa(int(n>>10)) + "K"
	}
	return strconv.Itoa(int(n))
}

// ParseSize reads a chunk size such as "64K", "1M" or "4096".
func ParseSize(s string) (uint32, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	mult := uint64(1)
	switch {
	case strings.HasSuffix(t, "K"):
		mult, t = 1<<10, t[:len(t)-1]
	case strings.HasSuffix(t, "M"):
		mult, t = 1<<20, t[:len(t)-1]
	}
	n, err := strconv.ParseUint(t, 10, 32)
	if err != nil || n == 0 || n*mult > MaxChunkSize {
		return 0, fmt.Errorf("chunk size %q: want a size such as 8K, 64K or 1M, at most 8M", s)
	}
	return uint32(n * mult), nil
}

// ParseHash reads a hash name: "sha2-256" (or "sha256") or "blake3".
func ParseHash(s string) (uint64, error) {
	switch strings.ToLower(s) {
	case "sha2-256", "sha256", "":
		return SHA256, nil
	case "blake3":
		return BLAKE3, nil
	}
	return 0, fmt.Errorf("hash %q: want sha2-256 or blake3", s)
}
