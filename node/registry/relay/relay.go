// Package relay carries registry blobs between the mirrors of a cluster
// over libp2p, so a blob is fetched from its upstream registry once for
// the whole cluster: a host asks the host chosen for the blob (package
// registry decides which), and streams the blob from it while that host
// is still fetching it.
//
// It never trusts what it receives: every chunk is checked against its
// id before it is handed on (the registry then checks the whole blob
// against its digest before keeping it). It never builds libp2p hosts.
package relay

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/faults"
	"github.com/p2pimg/p2pimg/node/registry"
)

// Proto is the blob relay protocol. One stream carries one blob, or one
// manifest (a request with ref set):
//
//	request:  uvarint length | JSON registry.PeerAsk (at most 4 KiB); then the asker closes its side
//	answer:   frames, each a type byte:
//	  'S' uvarint size+1 (0: unknown)          first, unless 'R' or 'E'
//	  'C' uvarint n | CID (n bytes) | uvarint m | chunk (m bytes, at most chunk.MaxChunkSize)
//	  'M' uvarint n | media type (n bytes) | uvarint m | manifest (m bytes, at most 4 MiB)   first, for a manifest
//	  'D'                                        the whole blob was sent and matched its digest (or the manifest was sent)
//	  'R' uvarint n | peer id (n bytes)          ask that host instead (AskJoin)
//	  'E' uvarint n | message (n bytes)          the host cannot give the blob (any time)
//
// A host that does not run a registry mirror does not speak it.
const Proto = protocol.ID("/p2pimg/regblob/1.0.0")

const maxAsk = 4 << 10

// errProtocol is a peer breaking the wire format.
var errProtocol = errors.New("blob relay protocol violation")

// Server is the registry side: what a blob request is answered with.
type Server interface {
	// ServePeer sends the blob ask names to host from; see
	// registry.Service.ServePeer.
	ServePeer(ctx context.Context, ask registry.PeerAsk, from string, sink registry.PeerSink) (redirect string, err error)
}

// Config configures the relay.
type Config struct {
	Host host.Host
	// Server answers requests; nil: this host runs no mirror and does not
	// speak Proto (it still asks others).
	Server Server
	// Live are the other hosts of the cluster this host counts as up.
	Live func() []peer.ID
	// Stall bounds the wait for a stream to open and for each frame (15s).
	Stall time.Duration
	Log   *slog.Logger
	// Faults: CorruptServe flips a byte of every chunk and manifest this
	// host sends;
	// StallServe sends a blob's first chunk, then nothing.
	Faults *faults.Faults
}

// Relay asks other mirrors for blobs and answers them.
type Relay struct {
	cfg     Config
	serving sync.WaitGroup // requests being answered, waited for before Run returns
}

var _ registry.Relay = (*Relay)(nil)

// New builds the relay; it starts nothing.
func New(cfg Config) *Relay {
	if cfg.Stall <= 0 {
		cfg.Stall = 15 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Relay{cfg: cfg}
}

// Run answers blob requests until ctx ends (when this host runs a mirror).
func (r *Relay) Run(ctx context.Context) error {
	if r.cfg.Server == nil {
		<-ctx.Done()
		return nil
	}
	r.cfg.Host.SetStreamHandler(Proto, func(st network.Stream) {
		r.serving.Add(1)
		defer r.serving.Done()
		if ctx.Err() != nil {
			st.Reset()
			return
		}
		r.serve(ctx, st)
	})
	<-ctx.Done()
	r.cfg.Host.RemoveStreamHandler(Proto)
	r.serving.Wait() // they read the store, closed after Run
	return nil
}

// Self is this host's peer id.
func (r *Relay) Self() string { return r.cfg.Host.ID().String() }

// Mirrors are the live hosts that speak Proto (they run a mirror).
func (r *Relay) Mirrors() []string {
	var out []string
	for _, p := range r.cfg.Live() {
		if p == r.cfg.Host.ID() {
			continue
		}
		if ps, err := r.cfg.Host.Peerstore().SupportsProtocols(p, Proto); err == nil && len(ps) > 0 {
			out = append(out, p.String())
		}
	}
	return out
}

// Open asks host for a blob (registry.Relay).
func (r *Relay) Open(ctx context.Context, hostID string, ask registry.PeerAsk) (int64, registry.PeerBlob, error) {
	p, err := peer.Decode(hostID)
	if err != nil {
		return 0, nil, fmt.Errorf("host %q: %w", hostID, err)
	}
	octx, cancel := context.WithTimeout(ctx, r.cfg.Stall)
	st, err := r.cfg.Host.NewStream(octx, p, Proto)
	cancel()
	if err != nil {
		return 0, nil, fmt.Errorf("host %s: %w", p, err)
	}
	rd := &reader{st: st, br: bufio.NewReaderSize(st, 256<<10), stall: r.cfg.Stall, host: p}
	rd.stop = context.AfterFunc(ctx, func() { st.Reset() })
	size, err := rd.start(ask)
	if err != nil {
		rd.stop()
		st.Reset()
		return 0, nil, err
	}
	return size, rd, nil
}

// OpenManifest asks host for a manifest (registry.Relay).
func (r *Relay) OpenManifest(ctx context.Context, hostID string, ask registry.PeerAsk) ([]byte, string, error) {
	p, err := peer.Decode(hostID)
	if err != nil {
		return nil, "", fmt.Errorf("host %q: %w", hostID, err)
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Stall)
	defer cancel()
	st, err := r.cfg.Host.NewStream(ctx, p, Proto)
	if err != nil {
		return nil, "", fmt.Errorf("host %s: %w", p, err)
	}
	defer st.Close()
	rd := &reader{st: st, br: bufio.NewReaderSize(st, 64<<10), stall: r.cfg.Stall, host: p}
	defer context.AfterFunc(ctx, func() { st.Reset() })()
	if err := rd.ask(ask); err != nil {
		return nil, "", err
	}
	typ, err := rd.br.ReadByte()
	if err != nil {
		return nil, "", rd.wrap(err)
	}
	switch typ {
	case 'M':
	case 'E':
		return nil, "", rd.refused()
	default:
		return nil, "", fmt.Errorf("host %s: %w: frame %q first, for a manifest", rd.host, errProtocol, typ)
	}
	data, mt, err := readManifest(rd.br)
	if err != nil {
		return nil, "", rd.wrap(err)
	}
	return data, mt, nil
}

// readManifest reads an 'M' frame's body and the 'D' after it.
func readManifest(br *bufio.Reader) (data []byte, mediaType string, err error) {
	mt, err := readBytes(br, 4<<10)
	if err != nil {
		return nil, "", err
	}
	if data, err = readBytes(br, maxManifest); err != nil {
		return nil, "", err
	}
	if typ, err := br.ReadByte(); err != nil || typ != 'D' {
		return nil, "", fmt.Errorf("%w: a manifest not followed by its end", errProtocol)
	}
	return data, string(mt), nil
}

// maxManifest bounds a manifest on the wire (the registry's own bound).
const maxManifest = 4 << 20

// reader is the asker's side of a stream: the blob's chunks, each
// checked against its id.
type reader struct {
	st    network.Stream
	br    *bufio.Reader
	stall time.Duration
	host  peer.ID
	stop  func() bool
	done  bool
	err   error
}

// ask sends the request and closes the asker's side.
func (rd *reader) ask(ask registry.PeerAsk) error {
	req, err := json.Marshal(ask)
	if err != nil {
		return err
	}
	rd.st.SetDeadline(time.Now().Add(rd.stall))
	bw := bufio.NewWriterSize(rd.st, 512)
	var l [binary.MaxVarintLen64]byte
	bw.Write(l[:binary.PutUvarint(l[:], uint64(len(req)))])
	bw.Write(req)
	if err := bw.Flush(); err != nil {
		return rd.wrap(err)
	}
	rd.st.CloseWrite()
	return nil
}

// start sends the request and reads the first frame.
func (rd *reader) start(ask registry.PeerAsk) (int64, error) {
	if err := rd.ask(ask); err != nil {
		return 0, err
	}
	typ, err := rd.br.ReadByte()
	if err != nil {
		return 0, rd.wrap(err)
	}
	switch typ {
	case 'S':
		n, err := binary.ReadUvarint(rd.br)
		if err != nil {
			return 0, rd.wrap(err)
		}
		if n > registry.MaxBlob+1 {
			return 0, fmt.Errorf("host %s: %w: a blob of %d bytes announced, at most %d", rd.host, errProtocol, n-1, int64(registry.MaxBlob))
		}
		return int64(n) - 1, nil
	case 'R':
		to, err := rd.readString(128)
		if err != nil {
			return 0, rd.wrap(err)
		}
		if _, err := peer.Decode(to); err != nil {
			return 0, fmt.Errorf("host %s: %w: redirect to %q: %v", rd.host, errProtocol, to, err)
		}
		return 0, &registry.Redirect{To: to}
	case 'E':
		return 0, rd.refused()
	}
	return 0, fmt.Errorf("host %s: %w: frame %q first", rd.host, errProtocol, typ)
}

// Next reads the next frame: a chunk, or the end (io.EOF, an error).
func (rd *reader) Next() (chunk.Block, error) {
	if rd.err != nil {
		return chunk.Block{}, rd.err
	}
	b, err := rd.frame()
	rd.err = err
	return b, err
}

func (rd *reader) frame() (chunk.Block, error) {
	rd.st.SetReadDeadline(time.Now().Add(rd.stall))
	typ, err := rd.br.ReadByte()
	if err != nil {
		return chunk.Block{}, rd.wrap(err)
	}
	switch typ {
	case 'D':
		rd.done = true
		return chunk.Block{}, io.EOF
	case 'E':
		return chunk.Block{}, rd.refused()
	case 'C':
	default:
		return chunk.Block{}, fmt.Errorf("host %s: %w: frame %q", rd.host, errProtocol, typ)
	}
	b, err := readChunk(rd.br)
	if err != nil {
		return chunk.Block{}, rd.wrap(err)
	}
	return b, nil
}

// readChunk reads a 'C' frame's body: a chunk id and its data, checked.
func readChunk(br *bufio.Reader) (chunk.Block, error) {
	idb, err := readBytes(br, 128)
	if err != nil {
		return chunk.Block{}, err
	}
	id, err := cid.Cast(idb)
	if err != nil {
		return chunk.Block{}, fmt.Errorf("%w: chunk id: %v", errProtocol, err)
	}
	data, err := readBytes(br, chunk.MaxChunkSize)
	if err != nil {
		return chunk.Block{}, err
	}
	return chunk.Verify(id, data)
}

// readBytes reads a uvarint length (at most limit) and that many bytes.
func readBytes(br *bufio.Reader, limit int) ([]byte, error) {
	n, err := binary.ReadUvarint(br)
	if err != nil {
		return nil, err
	}
	if n > uint64(limit) {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", errProtocol, n, limit)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(br, b); err != nil {
		return nil, err
	}
	return b, nil
}

func (rd *reader) readString(limit int) (string, error) {
	b, err := readBytes(rd.br, limit)
	return string(b), err
}

// refused reads an 'E' frame's message.
func (rd *reader) refused() error {
	msg, err := rd.readString(4 << 10)
	if err != nil {
		return rd.wrap(err)
	}
	return fmt.Errorf("host %s: %w: %s", rd.host, registry.ErrRelayRefused, msg)
}

// wrap names the host in a stream error; a deadline is ErrRelayStalled
// (yamux reports one as a net.Error that times out, not as
// os.ErrDeadlineExceeded).
func (rd *reader) wrap(err error) error {
	var ne net.Error
	if errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return fmt.Errorf("host %s: %w: nothing for %s", rd.host, registry.ErrRelayStalled, rd.stall)
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("host %s: %w", rd.host, err)
}

func (rd *reader) Close() error {
	rd.stop()
	if rd.done {
		return rd.st.Close()
	}
	return rd.st.Reset()
}
