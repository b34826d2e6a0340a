package chunk

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path"
	"slices"
	"strings"

	"github.com/fxamacker/cbor/v2"
	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
	"github.com/p2pimg/p2pimg/chunk/strictcbor"
)

// ManifestVersion is the manifest format this code writes and reads.
const ManifestVersion = 1

// MaxManifestSize bounds a manifest's encoding (about 5 million chunk
// references, a 300 GiB image at the default sizes).
const MaxManifestSize = 256 << 20

// ErrMalformed: bytes that claim to be a manifest (or another record) but are not.
var ErrMalformed = errors.New("malformed manifest")

// EntryType is the kind of a manifest entry.
type EntryType uint8

// Entry types. Devices, sockets and fifos are never stored.
const (
	Dir     EntryType = 1
	File    EntryType = 2
	Symlink EntryType = 3
)

func (t EntryType) String() string {
	switch t {
	case Dir:
		return "dir"
	case File:
		return "file"
	case Symlink:
		return "symlink"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Ref is one chunk of a file: its content id and length.
type Ref struct {
	CID  cid.Cid
	Size uint32
}

// Entry is one path of a layer.
type Entry struct {
	Path   string // slash-separated, relative, clean; never "." or ".."
	Type   EntryType
	Mode   fs.FileMode // permission, setuid, setgid and sticky bits only
	UID    uint32
	GID    uint32
	MTime  int64 // unix nanoseconds
	Size   int64 // files: the sum of the chunk sizes
	Target string
	Chunks []Ref
	// Link (files only) names an earlier file of the layer that this one
	// is a hard link to: the same inode. Size and Chunks repeat the
	// target's, so a reader that ignores links still gets the content.
	Link string
	// Xattrs are the entry's extended attributes, by full name
	// ("user.x", "security.capability"); none from trusted.overlay.
	Xattrs map[string][]byte
}

// Manifest is a layer: its chunking parameters and ordered entries. Its
// encoding is deterministic, and the manifest is addressed by the CID of that
// encoding, so the same tree always has the same id.
type Manifest struct {
	Params  Params
	Parent  cid.Cid           // the layer under this one, if any
	Meta    map[string]string // small annotations (product, description)
	Entries []Entry           // sorted by Path, unique
}

// Clone is a deep copy of m: a caller may change it without changing m.
func (m *Manifest) Clone() *Manifest {
	c := &Manifest{Params: m.Params, Parent: m.Parent, Entries: slices.Clone(m.Entries)}
	if m.Meta != nil {
		c.Meta = maps.Clone(m.Meta)
	}
	for i := range c.Entries {
		e := &c.Entries[i]
		e.Chunks = slices.Clone(e.Chunks)
		if e.Xattrs != nil {
			x := make(map[string][]byte, len(e.Xattrs))
			for k, v := range e.Xattrs {
				x[k] = slices.Clone(v)
			}
			e.Xattrs = x
		}
	}
	return c
}

// Size is the sum of the file sizes.
func (m *Manifest) Size() int64 {
	var n int64
	for i := range m.Entries {
		n += m.Entries[i].Size
	}
	return n
}

// ChunkCount is the number of chunk references (with repeats).
func (m *Manifest) ChunkCount() int {
	n := 0
	for i := range m.Entries {
		n += len(m.Entries[i].Chunks)
	}
	return n
}

// wire forms: what is actually encoded.

// wireRefs is an entry's chunk list on the wire: an array of [id bytes,
// size] pairs. It is coded by hand rather than through reflection: a
// 4 GiB image's manifest holds 65,536 of them, and decoding them was the
// largest step of a lazy activation's first read. The decoder still
// checks the whole manifest well-formed first, and DecodeManifest's
// comparison with the canonical encoding catches a pair encoded in any
// other way (a head longer than needed, say).
type wireRefs []Ref

// MarshalCBOR is the canonical encoding of the pairs.
func (rs wireRefs) MarshalCBOR() ([]byte, error) {
	n := 9
	for _, r := range rs {
		n += 1 + 9 + r.CID.ByteLen() + 5
	}
	b := appendHead(make([]byte, 0, n), cborArray, uint64(len(rs)))
	for _, r := range rs {
		b = append(b, cborPair)
		b = appendHead(b, cborBytes, uint64(r.CID.ByteLen()))
		b = append(b, r.CID.KeyString()...)
		b = appendHead(b, cborUint, uint64(r.Size))
	}
	return b, nil
}

// UnmarshalCBOR reads the pairs; each id must be a CID.
func (rs *wireRefs) UnmarshalCBOR(b []byte) error {
	n, rest, err := readHead(b, cborArray)
	if err != nil {
		return fmt.Errorf("chunk list: %w", err)
	}
	if n > uint64(len(rest)/3) { // a pair takes 3 bytes at least
		return fmt.Errorf("chunk list: %d pairs in %d bytes", n, len(rest))
	}
	out := make([]Ref, n)
	for k := range out {
		if len(rest) == 0 || rest[0] != cborPair {
			return fmt.Errorf("chunk %d: not an [id, size] pair", k)
		}
		l, r, err := readHead(rest[1:], cborBytes)
		if err != nil {
			return fmt.Errorf("chunk %d: id: %w", k, err)
		}
		if l > uint64(len(r)) {
			return fmt.Errorf("chunk %d: id of %d bytes, %d left", k, l, len(r))
		}
		id, err := cid.Cast(r[:l])
		if err != nil {
			return fmt.Errorf("chunk %d: %v", k, err)
		}
		size, r, err := readHead(r[l:], cborUint)
		if err != nil {
			return fmt.Errorf("chunk %d: size: %w", k, err)
		}
		if size > 1<<32-1 {
			return fmt.Errorf("chunk %d: size %d does not fit 32 bits", k, size)
		}
		out[k], rest = Ref{CID: id, Size: uint32(size)}, r
	}
	if len(rest) > 0 {
		return fmt.Errorf("chunk list: %d bytes after the last pair", len(rest))
	}
	*rs = out
	return nil
}

// CBOR major types (in the top 3 bits of an item's first byte), and the
// first byte of a two-element array.
const (
	cborUint  = 0 << 5
	cborBytes = 2 << 5
	cborArray = 4 << 5
	cborPair  = cborArray | 2
)

// appendHead appends the shortest head of an item of major type major
// and argument v.
func appendHead(b []byte, major byte, v uint64) []byte {
	switch {
	case v < 24:
		return append(b, major|byte(v))
	case v <= 0xff:
		return append(b, major|24, byte(v))
	case v <= 0xffff:
		return binary.BigEndian.AppendUint16(append(b, major|25), uint16(v))
	case v <= 0xffffffff:
		return binary.BigEndian.AppendUint32(append(b, major|26), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(b, major|27), v)
}

// readHead reads the head of an item that must be of major type major:
// its argument and what follows the head.
func readHead(b []byte, major byte) (uint64, []byte, error) {
	if len(b) == 0 {
		return 0, nil, errors.New("missing")
	}
	if b[0]&0xe0 != major {
		return 0, nil, fmt.Errorf("major type %d, want %d", b[0]>>5, major>>5)
	}
	info, b := b[0]&0x1f, b[1:]
	var size int
	switch {
	case info < 24:
		return uint64(info), b, nil
	case info <= 27:
		size = 1 << (info - 24)
	default:
		return 0, nil, fmt.Errorf("head argument %d not allowed", info)
	}
	if len(b) < size {
		return 0, nil, errors.New("truncated")
	}
	var v uint64
	for _, c := range b[:size] {
		v = v<<8 | uint64(c)
	}
	return v, b[size:], nil
}

type wireEntry struct {
	Path   string            `cbor:"1,keyasint"`
	Type   EntryType         `cbor:"2,keyasint"`
	Mode   uint32            `cbor:"3,keyasint"`
	UID    uint32            `cbor:"4,keyasint,omitempty"`
	GID    uint32            `cbor:"5,keyasint,omitempty"`
	MTime  int64             `cbor:"6,keyasint,omitempty"`
	Size   int64             `cbor:"7,keyasint,omitempty"`
	Target string            `cbor:"8,keyasint,omitempty"`
	Chunks wireRefs          `cbor:"9,keyasint,omitempty"`
	Xattrs map[string][]byte `cbor:"10,keyasint,omitempty"`
	Link   string            `cbor:"11,keyasint,omitempty"`
}

type wireManifest struct {
	Version int               `cbor:"1,keyasint"`
	Params  Params            `cbor:"2,keyasint"`
	Parent  []byte            `cbor:"3,keyasint,omitempty"`
	Meta    map[string]string `cbor:"4,keyasint,omitempty"`
	Entries []wireEntry       `cbor:"5,keyasint"`
}

// ManifestCodec is the multicodec of a manifest's CID: 0x51, plain cbor (chunk ids inside are bytes, not dag-cbor links).
const ManifestCodec = 0x51

var (
	encMode = strictcbor.Encoder()
	decMode = strictcbor.Decoder(1<<28, 1<<16)
)

// Encode validates m and returns its deterministic encoding and CID.
func (m *Manifest) Encode() ([]byte, cid.Cid, error) {
	if err := m.Validate(); err != nil {
		return nil, cid.Undef, err
	}
	w := wireManifest{Version: ManifestVersion, Params: m.Params, Meta: m.Meta, Entries: make([]wireEntry, len(m.Entries))}
	if m.Parent.Defined() {
		w.Parent = m.Parent.Bytes()
	}
	for i, e := range m.Entries {
		we := wireEntry{Path: e.Path, Type: e.Type, Mode: uint32(e.Mode), UID: e.UID, GID: e.GID, MTime: e.MTime, Size: e.Size, Target: e.Target,
			Xattrs: e.Xattrs, Link: e.Link, Chunks: e.Chunks}
		w.Entries[i] = we
	}
	b, err := encMode.Marshal(w)
	if err != nil {
		return nil, cid.Undef, err
	}
	if len(b) > MaxManifestSize {
		return nil, cid.Undef, fmt.Errorf("manifest is %d bytes, over the %d limit: use larger chunks", len(b), MaxManifestSize)
	}
	return b, ManifestCID(b), nil
}

// ManifestCID is the content id of an encoded manifest.
func ManifestCID(b []byte) cid.Cid {
	d := sha256.Sum256(b)
	m, _ := mh.Encode(d[:], SHA256) // cannot fail for a known code
	return cid.NewCidV1(ManifestCodec, m)
}

// DecodeManifest parses and validates an encoded manifest. Anything that is
// not exactly the canonical encoding of a valid manifest is rejected with an
// error that says what is wrong.
func DecodeManifest(b []byte) (*Manifest, error) {
	if len(b) > MaxManifestSize {
		return nil, fmt.Errorf("%w: %d bytes, over the %d limit", ErrMalformed, len(b), MaxManifestSize)
	}
	var w wireManifest
	if err := decMode.Unmarshal(b, &w); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if w.Version != ManifestVersion {
		return nil, fmt.Errorf("%w: version %d, this build reads %d", ErrMalformed, w.Version, ManifestVersion)
	}
	m := &Manifest{Params: w.Params, Meta: w.Meta, Entries: make([]Entry, len(w.Entries))}
	if w.Parent != nil {
		p, err := cid.Cast(w.Parent)
		if err != nil {
			return nil, fmt.Errorf("%w: parent: %v", ErrMalformed, err)
		}
		m.Parent = p
	}
	for i, we := range w.Entries {
		e := Entry{Path: we.Path, Type: we.Type, Mode: fs.FileMode(we.Mode), UID: we.UID, GID: we.GID, MTime: we.MTime, Size: we.Size, Target: we.Target,
			Xattrs: we.Xattrs, Link: we.Link}
		if len(we.Chunks) > 0 {
			e.Chunks = we.Chunks
		}
		m.Entries[i] = e
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	// One manifest, one encoding: refuse non-canonical forms, which would
	// give the same layer a second id. The wire form is encoded again (it
	// is what Encode would build from m: chunk ids keep their bytes), into
	// a buffer of b's size.
	again := bytes.NewBuffer(make([]byte, 0, len(b)))
	if err := encMode.(cbor.UserBufferEncMode).MarshalToBuffer(w, again); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if !bytes.Equal(again.Bytes(), b) {
		return nil, fmt.Errorf("%w: not in canonical encoding", ErrMalformed)
	}
	return m, nil
}

// Validate reports the first thing wrong with m.
func (m *Manifest) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, a...)...)
	}
	if err := m.Params.Validate(); err != nil {
		return bad("%v", err)
	}
	if m.Parent.Defined() && (m.Parent.Version() != 1 || m.Parent.Type() != ManifestCodec) {
		return bad("parent %s is not a manifest id", m.Parent)
	}
	if len(m.Meta) > 64 {
		return bad("%d meta keys, at most 64", len(m.Meta))
	}
	for k, v := range m.Meta {
		if k == "" || len(k) > 128 || len(v) > 4096 {
			return bad("meta key %.40q: keys 1-128 bytes, values at most 4096", k)
		}
	}
	dirs := map[string]bool{".": true}
	files := map[string]*Entry{} // files that may be link targets
	prev := ""
	for i := range m.Entries {
		e := &m.Entries[i]
		if err := CheckPath(e.Path); err != nil {
			return bad("entry %d: %v", i, err)
		}
		if i > 0 && e.Path <= prev {
			return bad("entry %q is out of order or repeated after %q", e.Path, prev)
		}
		prev = e.Path
		if !dirs[path.Dir(e.Path)] {
			return bad("%s: parent %q is not a directory of the layer", e.Path, path.Dir(e.Path))
		}
		if e.Mode&^(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0 {
			return bad("%s: mode %o has bits other than permissions", e.Path, uint32(e.Mode))
		}
		if err := checkLinkAndXattrs(e, files); err != nil {
			return bad("%s: %v", e.Path, err)
		}
		switch e.Type {
		case Dir:
			dirs[e.Path] = true
			if e.Size != 0 || e.Target != "" || len(e.Chunks) > 0 {
				return bad("%s: a directory has no size, target or chunks", e.Path)
			}
		case Symlink:
			if e.Target == "" || len(e.Target) > 4096 || strings.IndexByte(e.Target, 0) >= 0 {
				return bad("%s: symlink target must be 1-4096 bytes without NUL", e.Path)
			}
			if e.Size != 0 || len(e.Chunks) > 0 {
				return bad("%s: a symlink has no size or chunks", e.Path)
			}
		case File:
			if e.Target != "" {
				return bad("%s: a file has no link target", e.Path)
			}
			var sum int64
			for k, r := range e.Chunks {
				if err := CheckCID(r.CID); err != nil {
					return bad("%s: chunk %d: %v", e.Path, k, err)
				}
				if r.CID.Prefix().MhType != m.Params.Hash {
					return bad("%s: chunk %d uses hash 0x%x, the layer 0x%x", e.Path, k, r.CID.Prefix().MhType, m.Params.Hash)
				}
				if r.Size == 0 || int(r.Size) > m.Params.MaxSize() {
					return bad("%s: chunk %d has size %d outside 1..%d", e.Path, k, r.Size, m.Params.MaxSize())
				}
				sum += int64(r.Size)
			}
			if sum != e.Size {
				return bad("%s: size %d but chunks add up to %d", e.Path, e.Size, sum)
			}
		default:
			return bad("%s: unknown entry type %d", e.Path, e.Type)
		}
	}
	return nil
}

// checkLinkAndXattrs checks e's extended attributes and hard link (files:
// the earlier files that are no links themselves, which e joins if it is
// one too).
func checkLinkAndXattrs(e *Entry, files map[string]*Entry) error {
	if err := checkXattrs(e.Xattrs); err != nil {
		return err
	}
	if e.Link != "" {
		t := files[e.Link]
		if e.Type != File || t == nil || t.Size != e.Size || !slices.Equal(t.Chunks, e.Chunks) {
			return fmt.Errorf("hard link to %q, which is not an earlier file of the same size and chunks that is not a link itself", e.Link)
		}
	} else if e.Type == File {
		files[e.Path] = e
	}
	return nil
}

// Limits on extended attributes, as Linux sets them.
const (
	maxXattrName  = 255
	maxXattrValue = 64 << 10
	maxXattrs     = 256 << 10 // all of one entry's names and values
)

// checkXattrs reports the first extended attribute that may not be kept.
func checkXattrs(x map[string][]byte) error {
	total := 0
	for name, v := range x {
		switch {
		case name == "" || len(name) > maxXattrName || strings.IndexByte(name, 0) >= 0 || !strings.Contains(name, "."):
			return fmt.Errorf("xattr %.60q: a name is 1-255 bytes without NUL, with a namespace (user.NAME)", name)
		case strings.HasPrefix(name, "trusted.overlay."):
			return fmt.Errorf("xattr %.60q: overlayfs's own attributes are not kept in layers", name)
		case len(v) > maxXattrValue:
			return fmt.Errorf("xattr %.60q: %d bytes, at most %d", name, len(v), maxXattrValue)
		}
		total += len(name) + len(v)
	}
	if total > maxXattrs {
		return fmt.Errorf("xattrs: %d bytes, at most %d per entry", total, maxXattrs)
	}
	return nil
}

// CheckPath reports whether p may name an entry: relative, slash-separated,
// clean, without "..", NUL or empty components, at most 4096 bytes.
func CheckPath(p string) error {
	switch {
	case p == "" || p == "." || len(p) > 4096:
		return fmt.Errorf("path %.60q: empty, \".\" or longer than 4096 bytes", p)
	case strings.IndexByte(p, 0) >= 0:
		return fmt.Errorf("path %.60q contains NUL", p)
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("path %.60q is absolute", p)
	case path.Clean(p) != p:
		return fmt.Errorf("path %.60q is not clean", p)
	case p == ".." || strings.HasPrefix(p, "../"):
		return fmt.Errorf("path %.60q leaves the layer", p)
	}
	for _, c := range strings.Split(p, "/") {
		if len(c) > 255 {
			return fmt.Errorf("path %.60q has a component over 255 bytes", p)
		}
	}
	return nil
}

// UniqueRefs lists the layer's distinct chunks in order of first use. It is
// the order in which hosts exchange have-bitmaps for a layer.
func (m *Manifest) UniqueRefs() []Ref {
	seen := make(map[cid.Cid]bool)
	var out []Ref
	for i := range m.Entries {
		for _, r := range m.Entries[i].Chunks {
			if !seen[r.CID] {
				seen[r.CID] = true
				out = append(out, r)
			}
		}
	}
	return out
}

// RefIDs are the chunk ids of refs, in order.
func RefIDs(refs []Ref) []cid.Cid {
	ids := make([]cid.Cid, len(refs))
	for i, r := range refs {
		ids[i] = r.CID
	}
	return ids
}
