package relay

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"

	"github.com/p2pimg/p2pimg/node/registry"
)

// serve answers one blob request.
func (r *Relay) serve(ctx context.Context, st network.Stream) {
	defer st.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(ctx, func() { st.Reset() })()
	from := st.Conn().RemotePeer()
	st.SetReadDeadline(time.Now().Add(r.cfg.Stall))
	ask, err := readAsk(bufio.NewReaderSize(st, 512))
	if err != nil {
		r.cfg.Log.Info("registry relay: bad request", "peer", from, "err", err)
		st.Reset()
		return
	}
	st.SetReadDeadline(time.Time{})
	go func() { // the asker closed its side: anything else is it going away
		if _, err := io.Copy(io.Discard, st); err != nil {
			cancel()
		}
	}()
	fs := r.cfg.Faults.Get()
	w := &sink{bw: bufio.NewWriterSize(st, 64<<10), st: st, stall: r.cfg.Stall, corrupt: fs.CorruptServe}
	if fs.StallServe {
		w.halt = ctx.Done()
	}
	redirect, err := r.cfg.Server.ServePeer(ctx, ask, from.String(), w)
	switch {
	case redirect != "":
		w.frame('R', []byte(redirect))
	case err != nil && ctx.Err() == nil:
		r.cfg.Log.Info("registry relay: blob not given", "peer", from, "digest", ask.Digest, "err", err)
		w.frame('E', []byte(err.Error()))
	case err == nil:
		w.bw.WriteByte('D')
	}
	if w.flush() != nil {
		st.Reset()
	}
}

func readAsk(br *bufio.Reader) (registry.PeerAsk, error) {
	var ask registry.PeerAsk
	b, err := readBytes(br, maxAsk)
	if err != nil {
		return ask, fmt.Errorf("request: %w", err)
	}
	if err := json.Unmarshal(b, &ask); err != nil {
		return ask, fmt.Errorf("%w: request: %v", errProtocol, err)
	}
	if ask.Mode > registry.AskJoin {
		return ask, fmt.Errorf("%w: request mode %d", errProtocol, ask.Mode)
	}
	return ask, nil
}

// sink writes a blob's frames to the asker.
type sink struct {
	bw      *bufio.Writer
	st      network.Stream
	stall   time.Duration
	corrupt bool            // faults: flip a byte of every chunk and manifest
	halt    <-chan struct{} // faults: after the first chunk, send nothing until this is closed
	sent    int
	err     error
}

var _ registry.PeerSink = (*sink)(nil)

func (s *sink) Size(n int64) error {
	var l [1 + binary.MaxVarintLen64]byte
	l[0] = 'S'
	s.write(l[:1+binary.PutUvarint(l[1:], uint64(n+1))])
	return s.flush()
}

func (s *sink) Chunk(id cid.Cid, data []byte) error {
	if s.halt != nil && s.sent > 0 {
		<-s.halt // the asker gives up on a silent stream, or this host stops
		return errAskerGone
	}
	s.sent++
	if s.corrupt && len(data) > 0 {
		data = append([]byte(nil), data...)
		data[len(data)/2] ^= 0xff
	}
	s.frame('C', id.Bytes())
	var l [binary.MaxVarintLen64]byte
	s.write(l[:binary.PutUvarint(l[:], uint64(len(data)))])
	s.write(data)
	return s.flush()
}

func (s *sink) Manifest(mediaType string, data []byte) error {
	if s.corrupt && len(data) > 0 {
		data = append([]byte(nil), data...)
		data[len(data)/2] ^= 0xff
	}
	s.frame('M', []byte(mediaType))
	var l [binary.MaxVarintLen64]byte
	s.write(l[:binary.PutUvarint(l[:], uint64(len(data)))])
	s.write(data)
	return s.flush()
}

// frame writes a type byte and a length-prefixed payload.
func (s *sink) frame(typ byte, payload []byte) {
	var l [1 + binary.MaxVarintLen64]byte
	l[0] = typ
	s.write(l[:1+binary.PutUvarint(l[1:], uint64(len(payload)))])
	s.write(payload)
}

func (s *sink) write(b []byte) {
	if s.err != nil {
		return
	}
	s.st.SetWriteDeadline(time.Now().Add(s.stall))
	_, s.err = s.bw.Write(b)
}

func (s *sink) flush() error {
	if s.err == nil {
		s.st.SetWriteDeadline(time.Now().Add(s.stall))
		s.err = s.bw.Flush()
	}
	if s.err != nil {
		return errors.Join(errAskerGone, s.err)
	}
	return nil
}

// errAskerGone: the asking host stopped reading.
var errAskerGone = errors.New("the asking host went away")
