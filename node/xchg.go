package node

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/ipfs/go-cid"
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
const xchgProto = protocol.ID("/p2pimg/xchg/1.0.0")

const (
	reqManifest = 'M'
	reqHave     = 'H'
	reqChunks   = 'C'

	stOK      = 0
	stMissing = 1

	maxReqPayload = 8 << 10
	maxBatch      = 64
	idleTimeout   = 2 * time.Minute
)

var errProtocol = errors.New("protocol violation")

func writeReq(w *bufio.Writer, typ byte, payload []byte) error {
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
		return 0, nil, fmt.Errorf("%w: request length: %v", errProtocol, err)
	}
	if n > maxReqPayload {
		return 0, nil, fmt.Errorf("%w: request of %d bytes", errProtocol, n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return 0, nil, fmt.Errorf("%w: request: %v", errProtocol, err)
	}
	return typ, b, nil
}

func encodeCIDs(ids []cid.Cid) []byte {
	b := binary.AppendUvarint(nil, uint64(len(ids)))
	for _, id := range ids {
		bb := id.Bytes()
		b = binary.AppendUvarint(b, uint64(len(bb)))
		b = append(b, bb...)
	}
	return b
}

// decodeCIDs parses a chunk request: at most maxBatch chunk ids.
func decodeCIDs(b []byte) ([]cid.Cid, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n == 0 || n > maxBatch {
		return nil, fmt.Errorf("%w: batch of %d chunks (1..%d)", errProtocol, n, maxBatch)
	}
	b = b[k:]
	ids := make([]cid.Cid, 0, n)
	for range n {
		l, k := binary.Uvarint(b)
		if k <= 0 || l > uint64(len(b)-k) || l > 128 {
			return nil, fmt.Errorf("%w: truncated chunk id", errProtocol)
		}
		id, err := cid.Cast(b[k : k+int(l)])
		if err != nil {
			return nil, fmt.Errorf("%w: chunk id: %v", errProtocol, err)
		}
		if err := chunk.CheckCID(id); err != nil {
			return nil, fmt.Errorf("%w: %v", errProtocol, err)
		}
		ids = append(ids, id)
		b = b[k+int(l):]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the chunk ids", errProtocol, len(b))
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

// readItem reads one answer item of at most max bytes into buf.
func readItem(r *bufio.Reader, max int, buf []byte) (byte, []byte, error) {
	st, err := r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	if st != stOK && st != stMissing {
		return 0, nil, fmt.Errorf("%w: status %d", errProtocol, st)
	}
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: item length: %v", errProtocol, err)
	}
	if n > uint64(max) {
		return 0, nil, fmt.Errorf("%w: item of %d bytes, at most %d", errProtocol, n, max)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		return 0, nil, err
	}
	return st, buf, nil
}

// handleXchg serves one peer's stream until it ends.
func (n *Node) handleXchg(s network.Stream) {
	defer s.Close()
	p := s.Conn().RemotePeer()
	br := bufio.NewReaderSize(s, 16<<10)
	bw := bufio.NewWriterSize(s, 256<<10)
	ctx := context.Background()
	sent := n.metrics.bytesOut.WithLabelValues(p.String())
	buf := make([]byte, 0, 256<<10) // the default maximum chunk size; larger ones get their own
	for {
		s.SetReadDeadline(time.Now().Add(idleTimeout))
		typ, payload, err := readReq(br)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				n.log.Debug("xchg: bad request", "peer", p, "err", err)
				s.Reset()
			}
			return
		}
		s.SetReadDeadline(time.Time{})
		switch typ {
		case reqManifest, reqHave:
			id, err := cid.Cast(payload)
			if err != nil {
				s.Reset()
				return
			}
			var data []byte
			if typ == reqManifest {
				data, err = n.manifestBytes(ctx, id)
			} else {
				data, err = n.haveBitmap(ctx, id)
			}
			if err != nil {
				writeItem(bw, stMissing, nil)
			} else {
				writeItem(bw, stOK, data)
			}
		case reqChunks:
			ids, err := decodeCIDs(payload)
			if err != nil {
				n.log.Debug("xchg: bad chunk request", "peer", p, "err", err)
				s.Reset()
				return
			}
			if n.cfg.TestStallServe {
				io.Copy(io.Discard, s) // holds the stream, answers nothing, until it closes
				return
			}
			for _, id := range ids {
				data, err := n.db.GetInto(ctx, id, buf)
				if err != nil {
					if errors.Is(err, chunk.ErrCorrupt) {
						n.log.Warn("not serving a chunk damaged on disk", "cid", id.String())
						n.metrics.corruptOnDisk.Inc()
					}
					writeItem(bw, stMissing, nil)
					continue
				}
				if n.up != nil {
					if err := n.up.WaitN(ctx, len(data)); err != nil {
						s.Reset()
						return
					}
				}
				if n.cfg.TestCorruptServe && len(data) > 0 {
					data[len(data)/2] ^= 0xff
				}
				if err := writeItem(bw, stOK, data); err != nil {
					s.Reset()
					return
				}
				n.metrics.chunksServed.Inc()
				n.stats.add(p, 0, int64(len(data)))
				sent.Add(float64(len(data)))
			}
		default:
			n.log.Debug("xchg: unknown request", "peer", p, "type", typ)
			s.Reset()
			return
		}
		if err := bw.Flush(); err != nil {
			s.Reset()
			return
		}
	}
}

// xconn is the client side of an exchange stream.
type xconn struct {
	s  network.Stream
	br *bufio.Reader
	bw *bufio.Writer
}

func (n *Node) dialXchg(ctx context.Context, p peer.ID) (*xconn, error) {
	s, err := n.host.NewStream(ctx, p, xchgProto)
	if err != nil {
		return nil, err
	}
	return &xconn{s: s, br: bufio.NewReaderSize(s, 16<<10), bw: bufio.NewWriterSize(s, 16<<10)}, nil // reads of whole chunks bypass the small buffer
}

func (c *xconn) close() { c.s.Close() }

// ask sends one request and reads a one-item answer.
func (c *xconn) ask(typ byte, id cid.Cid, max int, timeout time.Duration) ([]byte, error) {
	c.s.SetDeadline(time.Now().Add(timeout))
	defer c.s.SetDeadline(time.Time{})
	if err := writeReq(c.bw, typ, id.Bytes()); err != nil {
		return nil, err
	}
	if err := c.bw.Flush(); err != nil {
		return nil, err
	}
	st, data, err := readItem(c.br, max, nil)
	if err != nil {
		return nil, err
	}
	if st != stOK {
		return nil, chunk.ErrNotFound
	}
	return data, nil
}
