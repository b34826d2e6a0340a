package license

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/p2pimg/p2pimg/chunk/strictcbor"
)

// Errors a licence can be refused with; the returned error wraps one of them
// and names the licence.
var (
	ErrBadSignature  = errors.New("bad signature (the licence was edited or not signed by its key)")
	ErrUnknownIssuer = errors.New("issuer key is not trusted by this cluster (not in the cluster file's issuers)")
	ErrExpired       = errors.New("licence has expired")
	ErrMalformed     = errors.New("malformed licence")
)

// License is a signed grant of Seats seats of Product, each seat shared by
// at most Share consumers (VMs) on one host.
type License struct {
	Issuer  []byte `cbor:"1,keyasint" json:"issuer"`            // Ed25519 public key, 32 bytes
	Product string `cbor:"2,keyasint" json:"product"`           // product name
	Seats   int    `cbor:"3,keyasint" json:"seats"`             // seats across the fleet
	Share   int    `cbor:"4,keyasint" json:"share"`             // consumers per seat on one host; 1 = exclusive
	Issued  int64  `cbor:"5,keyasint" json:"issued"`            // unix seconds; a newer licence replaces an older one
	Expires int64  `cbor:"6,keyasint,omitempty" json:"expires"` // unix seconds; 0 = never
	Serial  []byte `cbor:"7,keyasint" json:"-"`                 // 16 random bytes: two licences never share an id
	Sig     []byte `cbor:"8,keyasint,omitempty" json:"-"`       // Ed25519 over the encoding without Sig
}

var productRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// CheckProduct reports whether s is a valid product name.
func CheckProduct(s string) error {
	if !productRE.MatchString(s) {
		return fmt.Errorf("product %q: want 1-128 letters, digits, '.', '_' or '-'", s)
	}
	return nil
}

var (
	encMode = strictcbor.Encoder()
	// Limits a seat table of millions of seats can meet; the bytes given
	// bound what decoding allocates.
	decMode = strictcbor.Decoder(1<<22, 1<<16)
)

// decodeCanonical decodes b strictly into v and refuses any encoding that is
// not the canonical one, so one value has exactly one byte form.
func decodeCanonical(b []byte, v any) error {
	if err := decMode.Unmarshal(b, v); err != nil {
		return err
	}
	again, err := encMode.Marshal(v)
	if err != nil {
		return err
	}
	if !bytes.Equal(again, b) {
		return errors.New("not in canonical form")
	}
	return nil
}

// KeyID is the short id of an issuer key: 16 hex digits of its SHA-256.
func KeyID(pub []byte) string {
	s := sha256.Sum256(pub)
	return hex.EncodeToString(s[:8])
}

// KeyID is the id of the key that signed l.
func (l *License) KeyID() string { return KeyID(l.Issuer) }

// ID names this licence: the first 16 hex digits of the SHA-256 of its
// signed encoding.
func (l *License) ID() string {
	b, _ := encMode.Marshal(l)
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:8])
}

func (l *License) signedBytes() []byte {
	c := *l
	c.Sig = nil
	b, _ := encMode.Marshal(&c)
	return append([]byte("p2pimg-license-v1\x00"), b...)
}

func (l *License) check() error {
	if len(l.Issuer) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: issuer key is %d bytes, want %d", ErrMalformed, len(l.Issuer), ed25519.PublicKeySize)
	}
	if err := CheckProduct(l.Product); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if l.Seats < 1 || l.Seats > 1<<20 {
		return fmt.Errorf("%w: seats %d: want 1 to %d", ErrMalformed, l.Seats, 1<<20)
	}
	if l.Share < 1 || l.Share > 1024 {
		return fmt.Errorf("%w: share %d: want 1 to 1024", ErrMalformed, l.Share)
	}
	if l.Expires != 0 && l.Expires <= l.Issued {
		return fmt.Errorf("%w: expires before it was issued", ErrMalformed)
	}
	if len(l.Serial) != 16 {
		return fmt.Errorf("%w: serial is %d bytes, want 16", ErrMalformed, len(l.Serial))
	}
	return nil
}

// Issue signs a licence with the issuer key.
func Issue(key ed25519.PrivateKey, product string, seats, share int, issued, expires time.Time) (*License, error) {
	l := &License{
		Issuer:  key.Public().(ed25519.PublicKey),
		Product: product,
		Seats:   seats,
		Share:   share,
		Issued:  issued.Unix(),
		Serial:  make([]byte, 16),
	}
	if !expires.IsZero() {
		l.Expires = expires.Unix()
	}
	rand.Read(l.Serial)
	if err := l.check(); err != nil {
		return nil, err
	}
	l.Sig = ed25519.Sign(key, l.signedBytes())
	return l, nil
}

// Verify checks the signature, that the issuer is one of trusted (raw
// Ed25519 public keys) and that the licence has not expired at now.
func (l *License) Verify(trusted [][]byte, now time.Time) error {
	if err := l.check(); err != nil {
		return err
	}
	if !ed25519.Verify(l.Issuer, l.signedBytes(), l.Sig) {
		return fmt.Errorf("licence %s for %s: %w", l.ID(), l.Product, ErrBadSignature)
	}
	known := false
	for _, k := range trusted {
		known = known || bytes.Equal(k, l.Issuer)
	}
	if !known {
		return fmt.Errorf("licence %s for %s: key %s: %w", l.ID(), l.Product, l.KeyID(), ErrUnknownIssuer)
	}
	if l.Expires != 0 && now.Unix() >= l.Expires {
		return fmt.Errorf("licence %s for %s: %w on %s", l.ID(), l.Product, ErrExpired, time.Unix(l.Expires, 0).UTC().Format(time.DateOnly))
	}
	return nil
}

// Marshal is the canonical binary form of a signed licence.
func (l *License) Marshal() []byte {
	b, _ := encMode.Marshal(l)
	return b
}

// Unmarshal decodes the binary form strictly (canonical CBOR, no unknown
// fields) and checks the fields. It does not check the signature: Verify does.
func Unmarshal(b []byte) (*License, error) {
	if len(b) > 4096 {
		return nil, fmt.Errorf("%w: %d bytes is too large", ErrMalformed, len(b))
	}
	var l License
	if err := decodeCanonical(b, &l); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if err := l.check(); err != nil {
		return nil, err
	}
	return &l, nil
}

const pemLicense = "P2PIMG LICENSE"

// Text is the file form of a licence: a comment line for people, then a PEM
// block holding the binary form.
func (l *License) Text() string {
	exp := "never"
	if l.Expires != 0 {
		exp = time.Unix(l.Expires, 0).UTC().Format(time.DateOnly)
	}
	head := fmt.Sprintf("# p2pimg licence %s: product=%s seats=%d share=%d expires=%s key=%s\n",
		l.ID(), l.Product, l.Seats, l.Share, exp, l.KeyID())
	return head + string(pem.EncodeToMemory(&pem.Block{Type: pemLicense, Bytes: l.Marshal()}))
}

// Parse reads the file form (comment lines before the PEM block are
// ignored; nothing may follow it).
func Parse(text []byte) (*License, error) {
	blk, rest := pem.Decode(text)
	if blk == nil {
		return nil, fmt.Errorf("%w: no %q PEM block", ErrMalformed, pemLicense)
	}
	if blk.Type != pemLicense {
		return nil, fmt.Errorf("%w: PEM block is %q, want %q", ErrMalformed, blk.Type, pemLicense)
	}
	if len(blk.Headers) != 0 {
		return nil, fmt.Errorf("%w: unexpected PEM headers", ErrMalformed)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: text after the licence block", ErrMalformed)
	}
	return Unmarshal(blk.Bytes)
}

// NewIssuerKey makes an issuer key and returns its file form (PKCS#8 PEM,
// readable by openssl).
func NewIssuerKey() (ed25519.PrivateKey, []byte, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, nil, err
	}
	return priv, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseIssuerKey reads the file form of an issuer key.
func ParseIssuerKey(b []byte) (ed25519.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, errors.New("not an issuer key: want a PEM \"PRIVATE KEY\" block (from `p2pimg license issuer-key`)")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("not an issuer key: %v", err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("issuer key is a %T, want Ed25519", k)
	}
	return priv, nil
}

// PublicText is the form of an issuer public key in the cluster file: 64
// hex digits.
func PublicText(pub []byte) string { return hex.EncodeToString(pub) }

// ParsePublic reads an issuer public key in its cluster file form.
func ParsePublic(s string) ([]byte, error) {
	b, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("issuer key %q: want 64 hex digits (an Ed25519 public key)", s)
	}
	return b, nil
}
