package xchg

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	msmux "github.com/multiformats/go-multistream"
)

// The have-watch protocol: a peer fetching a layer learns of the chunks
// this host stores as they arrive, instead of asking for a bitmap again
// and again. A host that does not speak it is asked with ReqHave on the
// exchange stream, as before.
//
//	request:  'H' | uvarint length | manifest CID (as on the exchange stream)
//	answer:   item(bitmap over the layer's UniqueRefs), as for ReqHave
//	then:     frames of uvarint n (1..MaxNotes) | n x uvarint (index<<2 | kind)
//
// While the host fetches the layer it says so (a state note) and sends a
// note for each change; it ends the stream (a clean EOF) once the layer is
// complete here.
const HaveProto = protocol.ID("/p2pimg/have/1.0.0")

// NoteKind says what a note reports of a chunk.
type NoteKind uint8

const (
	// NoteHave: the host has stored the chunk.
	NoteHave NoteKind = 0
	// NoteAsked: the host asked a complete peer (a seed) for the chunk; it
	// is no one's first copy to take from that seed too.
	NoteAsked NoteKind = 1
	// NoteDropped: the host no longer expects the chunk it asked for.
	NoteDropped NoteKind = 2
	// NoteState: Index 1, the host is fetching the layer now; 0, it is not
	// (what it had asked for is no longer coming).
	NoteState NoteKind = 3
)

// MaxNotes is the most notes one frame may carry.
const MaxNotes = 4096

// Note is one change in what a host holds of a layer.
type Note struct {
	Index int
	Kind  NoteKind
}

// Watcher is an optional part of a Source: the chunks of a layer this host
// stores as they arrive.
type Watcher interface {
	// WatchHave calls bitmap once with the layer's have-bitmap (as
	// HaveBitmap), then notes with every later change, until the layer is
	// complete here (nil), ctx ends, or a callback fails (its error). An
	// error when the manifest is absent.
	WatchHave(ctx context.Context, id cid.Cid, bitmap func([]byte) error, notes func([]Note) error) error
}

// serveHave answers one have-watch stream.
func (s *Server) serveHave(ctx context.Context, w Watcher, st network.Stream) {
	defer st.Close()
	defer context.AfterFunc(ctx, func() { st.Reset() })()
	st.SetReadDeadline(time.Now().Add(idleTimeout))
	typ, payload, err := readReq(bufio.NewReaderSize(st, 256))
	if err != nil || typ != ReqHave {
		st.Reset()
		return
	}
	id, err := cid.Cast(payload)
	if err != nil {
		st.Reset()
		return
	}
	// The client sends nothing more: its close (or reset) ends the watch.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		st.SetReadDeadline(time.Time{})
		io.Copy(io.Discard, st)
		cancel()
	}()
	bw := bufio.NewWriterSize(st, 4<<10)
	err = w.WatchHave(wctx, id, func(bm []byte) error {
		if err := writeItem(bw, StatusOK, bm); err != nil {
			return err
		}
		return bw.Flush()
	}, func(ns []Note) error {
		return writeNotes(bw, ns)
	})
	if err != nil && wctx.Err() == nil {
		writeItem(bw, StatusMissing, nil) // before any bitmap: the manifest is absent
		bw.Flush()
	}
}

func writeNotes(bw *bufio.Writer, ns []Note) error {
	for len(ns) > 0 {
		k := min(len(ns), MaxNotes)
		b := binary.AppendUvarint(nil, uint64(k))
		for _, n := range ns[:k] {
			b = binary.AppendUvarint(b, uint64(n.Index)<<2|uint64(n.Kind))
		}
		if _, err := bw.Write(b); err != nil {
			return err
		}
		ns = ns[k:]
	}
	return bw.Flush()
}

// HaveWatch is the client side of a have-watch stream.
type HaveWatch struct {
	s  network.Stream
	br *bufio.Reader
	n  int
}

// ErrNoWatch is a peer that does not speak the have-watch protocol.
var ErrNoWatch = errors.New("peer does not send have-notes")

// WatchHave opens a have-watch on peer p for layer id of n distinct
// chunks and reads its bitmap. ErrNoWatch when p lacks the protocol;
// ErrMissing when p lacks the layer's manifest.
func WatchHave(ctx context.Context, h host.Host, p peer.ID, id cid.Cid, n int, timeout time.Duration) (*HaveWatch, []bool, error) {
	s, err := h.NewStream(ctx, p, HaveProto)
	if err != nil {
		var nse msmux.ErrNotSupported[protocol.ID]
		if errors.As(err, &nse) {
			return nil, nil, fmt.Errorf("%w: %v", ErrNoWatch, err)
		}
		return nil, nil, err
	}
	hw := &HaveWatch{s: s, br: bufio.NewReaderSize(s, 4<<10), n: n}
	bw := bufio.NewWriterSize(s, 256)
	s.SetDeadline(time.Now().Add(timeout))
	err = WriteReq(bw, ReqHave, id.Bytes())
	if err == nil {
		err = bw.Flush()
	}
	var st byte
	var bm []byte
	if err == nil {
		st, bm, err = ReadItem(hw.br, (n+7)/8, nil)
	}
	if err != nil {
		s.Reset()
		return nil, nil, err
	}
	s.SetDeadline(time.Time{})
	if st != StatusOK {
		s.Close()
		return nil, nil, ErrMissing
	}
	has, err := UnpackBits(bm, n)
	if err != nil {
		s.Reset()
		return nil, nil, err
	}
	return hw, has, nil
}

// ErrMissing is a peer that does not have the layer's manifest.
var ErrMissing = errors.New("peer does not have the layer")

// Next reads the next frame of notes; io.EOF when the peer ended the watch.
func (hw *HaveWatch) Next() ([]Note, error) {
	k, err := binary.ReadUvarint(hw.br)
	if err != nil {
		return nil, err
	}
	if k == 0 || k > MaxNotes {
		return nil, fmt.Errorf("%w: %d notes in a frame (1..%d)", ErrProtocol, k, MaxNotes)
	}
	ns := make([]Note, k)
	for j := range ns {
		v, err := binary.ReadUvarint(hw.br)
		if err != nil {
			return nil, framing("note", err)
		}
		idx, kind := v>>2, NoteKind(v&3)
		if kind == NoteState && idx > 1 || kind != NoteState && idx >= uint64(hw.n) {
			return nil, fmt.Errorf("%w: note %d of kind %d for %d chunks", ErrProtocol, idx, kind, hw.n)
		}
		ns[j] = Note{Index: int(idx), Kind: kind}
	}
	return ns, nil
}

// Close ends the watch.
func (hw *HaveWatch) Close() { hw.s.Close() }

// Reset aborts the watch: a blocked Next returns at once.
func (hw *HaveWatch) Reset() { hw.s.Reset() }
