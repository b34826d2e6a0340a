// Package xchg is the chunk exchange: its wire format, the server that
// answers a peer's stream from this host's store, and the client side of a
// stream. It moves bytes only: it never verifies or stores what it
// receives (package fetch does, before anything reaches the store).
package xchg

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/p2pimg/p2pimg/chunk"
)

// The chunk exchange protocol. One stream carries requests and their
// answers in order, so a client can pipeline: it sends several chunk batches
// before reading the first answer.
//
//	request:  type (1 byte) | uvarint length | payload (at most 8 KiB)
//	  'M' manifest   payload: manifest CID     answer: item(manifest bytes)
//	  'H' have       payload: manifest CID     answer: item(bitmap over the layer's UniqueRefs)
//	  'C' chunks     payload: uvarint n | n x (uvarint len | CID), n <= 64
//	                 answer: n items, one per CID, in order
//	item:     status (1 byte: 0 ok, 1 not here) | uvarint length | bytes
const Proto = protocol.ID("/p2pimg/xchg/1.0.0")

const (
	ReqManifest = 'M'
	ReqHave     = 'H'
	ReqChunks   = 'C'

	StatusOK      = 0
	StatusMissing = 1

	maxReqPayload = 8 << 10
	// MaxBatch is the most chunk ids one request may name.
	MaxBatch    = 64
	idleTimeout = 2 * time.Minute
)

// ErrProtocol is a peer breaking the wire format.
var ErrProtocol = errors.New("protocol violation")

// WriteReq writes one request; it is sent at the next Flush.
func WriteReq(w *bufio.Writer, typ byte, payload []byte) error {
	w.WriteByte(typ)
	var l [binary.MaxVarintLen64]byte
	w.Write(l[:binary.PutUvarint(l[:], uint64(len(payload)))])
	_, err := w.Write(payload)
	return err
}

// readReq reads one request; io.EOF at a request boundary is a clean end.
func readReq(r *bufio.Reader) (byte, []byte, error) {
	typ, err := r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return 0, nil, framing("request length", err)
	}
	if n > maxReqPayload {
		return 0, nil, fmt.Errorf("%w: request of %d bytes", ErrProtocol, n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return 0, nil, framing("request", err)
	}
	return typ, b, nil
}

// EncodeCIDs is the payload of a chunk request.
func EncodeCIDs(ids []cid.Cid) []byte {
	b := binary.AppendUvarint(nil, uint64(len(ids)))
	for _, id := range ids {
		bb := id.Bytes()
		b = binary.AppendUvarint(b, uint64(len(bb)))
		b = append(b, bb...)
	}
	return b
}

// DecodeCIDs parses a chunk request: at most MaxBatch chunk ids.
func DecodeCIDs(b []byte) ([]cid.Cid, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n == 0 || n > MaxBatch {
		return nil, fmt.Errorf("%w: batch of %d chunks (1..%d)", ErrProtocol, n, MaxBatch)
	}
	b = b[k:]
	ids := make([]cid.Cid, 0, n)
	for range n {
		l, k := binary.Uvarint(b)
		if k <= 0 || l > uint64(len(b)-k) || l > 128 {
			return nil, fmt.Errorf("%w: truncated chunk id", ErrProtocol)
		}
		id, err := cid.Cast(b[k : k+int(l)])
		if err != nil {
			return nil, fmt.Errorf("%w: chunk id: %v", ErrProtocol, err)
		}
		if err := chunk.CheckCID(id); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrProtocol, err)
		}
		ids = append(ids, id)
		b = b[k+int(l):]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the chunk ids", ErrProtocol, len(b))
	}
	return ids, nil
}

func writeItem(w *bufio.Writer, status byte, data []byte) error {
	w.WriteByte(status)
	var l [binary.MaxVarintLen64]byte
	w.Write(l[:binary.PutUvarint(l[:], uint64(len(data)))])
	_, err := w.Write(data)
	return err
}

// ReadItem reads one answer item of at most max bytes into buf.
func ReadItem(r *bufio.Reader, max int, buf []byte) (byte, []byte, error) {
	st, err := r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	if st != StatusOK && st != StatusMissing {
		return 0, nil, fmt.Errorf("%w: status %d", ErrProtocol, st)
	}
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return 0, nil, framing("item length", err)
	}
	if n > uint64(max) {
		return 0, nil, fmt.Errorf("%w: item of %d bytes, at most %d", ErrProtocol, n, max)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		return 0, nil, framing("item", err)
	}
	return st, buf, nil
}

// framing is a read error inside a frame: a violation when the peer
// closed the stream mid-frame or sent a varint that overflows (the only
// errors the peer alone decides), not when the stream itself failed
// (reset, deadline, connection lost: a host killed or paused).
func framing(what string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || strings.Contains(err.Error(), "varint overflows") {
		return fmt.Errorf("%w: %s cut short: %v", ErrProtocol, what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Conn is the client side of an exchange stream.
type Conn struct {
	s  network.Stream
	br *bufio.Reader
	bw *bufio.Writer
}

// Dial opens an exchange stream to p.
func Dial(ctx context.Context, h host.Host, p peer.ID) (*Conn, error) {
	s, err := h.NewStream(ctx, p, Proto)
	if err != nil {
		return nil, err
	}
	return &Conn{s: s, br: bufio.NewReaderSize(s, 16<<10), bw: bufio.NewWriterSize(s, 16<<10)}, nil // reads of whole chunks bypass the small buffer
}

// Close ends the stream.
func (c *Conn) Close() { c.s.Close() }

// Reset aborts the stream: a read blocked on it returns at once.
func (c *Conn) Reset() { c.s.Reset() }

// RequestChunks queues a request for ids (at most MaxBatch); it is sent at
// the next Flush.
func (c *Conn) RequestChunks(ids []cid.Cid) error { return WriteReq(c.bw, ReqChunks, EncodeCIDs(ids)) }

// Flush sends the queued requests.
func (c *Conn) Flush() error { return c.bw.Flush() }

// SetReadTimeout bounds the reads that follow (one batch's answers).
func (c *Conn) SetReadTimeout(d time.Duration) { c.s.SetReadDeadline(time.Now().Add(d)) }

// ReadChunk reads the next answer item of at most max bytes into buf's
// storage (when it has room).
func (c *Conn) ReadChunk(max int, buf []byte) (status byte, data []byte, err error) {
	return ReadItem(c.br, max, buf)
}

// Ask sends one request and reads a one-item answer.
func (c *Conn) Ask(typ byte, id cid.Cid, max int, timeout time.Duration) ([]byte, error) {
	c.s.SetDeadline(time.Now().Add(timeout))
	defer c.s.SetDeadline(time.Time{})
	if err := WriteReq(c.bw, typ, id.Bytes()); err != nil {
		return nil, err
	}
	if err := c.bw.Flush(); err != nil {
		return nil, err
	}
	st, data, err := ReadItem(c.br, max, nil)
	if err != nil {
		return nil, err
	}
	if st != StatusOK {
		return nil, chunk.ErrNotFound
	}
	return data, nil
}

// PackBits is a have-bitmap: bit i set when bs[i] is.
func PackBits(bs []bool) []byte {
	b := make([]byte, (len(bs)+7)/8)
	for i, v := range bs {
		if v {
			b[i/8] |= 1 << (i % 8)
		}
	}
	return b
}

// UnpackBits reads a have-bitmap of n chunks.
func UnpackBits(b []byte, n int) ([]bool, error) {
	if len(b) != (n+7)/8 {
		return nil, fmt.Errorf("%w: bitmap of %d bytes for %d chunks", ErrProtocol, len(b), n)
	}
	out := make([]bool, n)
	for i := range out {
		out[i] = b[i/8]&(1<<(i%8)) != 0
	}
	return out, nil
}
