package xchg

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/faults"
	"github.com/p2pimg/p2pimg/node/p2p"
)

// Source is what the server serves.
type Source interface {
	// ManifestBytes is a stored manifest's encoding; an error wrapping
	// chunk.ErrNotFound when absent.
	ManifestBytes(ctx context.Context, id cid.Cid) ([]byte, error)
	// HaveBitmap says which of manifest id's distinct chunks this host has
	// (PackBits over its UniqueRefs); an error when the manifest is absent.
	HaveBitmap(ctx context.Context, id cid.Cid) ([]byte, error)
	// GetInto is a stored chunk read into buf's storage when it has room;
	// chunk.ErrNotFound when absent, chunk.ErrCorrupt when damaged on disk.
	GetInto(ctx context.Context, id cid.Cid, buf []byte) ([]byte, error)
}

// ServerConfig configures a Server.
type ServerConfig struct {
	Host   host.Host
	Source Source
	Log    *slog.Logger
	Stats  *p2p.Stats    // counts bytes served per peer
	Up     *rate.Limiter // caps bytes served per second; nil: no cap
	Reg    prometheus.Registerer
	Faults *faults.Faults
	// Conduct counts a peer's protocol violations (and blocks it past a
	// threshold); nil: violations only close the stream.
	Conduct *p2p.Conduct
	// Limits per peer: open streams (more are reset at once) and requests
	// per second (more wait); defaults 16, 10,000/s in bursts of 20,000
	// (a request names up to 64 chunks: even 4 KiB chunks in batches of 16
	// pass at 650 MB/s).
	MaxStreams   int
	RequestRate  rate.Limit
	RequestBurst int
}

// Server answers exchange streams from this host's store.
type Server struct {
	cfg           ServerConfig
	faults        faults.Faults
	bytesOut      *prometheus.CounterVec
	chunksServed  prometheus.Counter
	corruptOnDisk prometheus.Counter
	refused       prometheus.Counter
	throttled     prometheus.Counter

	mu    sync.Mutex
	peers map[peer.ID]*client // peers with streams open
}

// client is what the server keeps of a peer while it has streams open.
type client struct {
	streams int
	reqs    *rate.Limiter
}

// NewServer registers the server's metrics; it serves nothing until Run.
func NewServer(cfg ServerConfig) *Server {
	s := &Server{cfg: cfg, faults: cfg.Faults.Get(),
		bytesOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "p2pimg_chunk_bytes_out_total", Help: "Chunk bytes served, by peer.",
		}, []string{"peer"}),
		chunksServed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "p2pimg_chunks_served_total", Help: "Chunks served to peers.",
		}),
		corruptOnDisk: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "p2pimg_chunks_corrupt_on_disk_total", Help: "Stored chunks found damaged when read.",
		}),
	}
	s.refused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "p2pimg_xchg_streams_refused_total", Help: "Exchange streams reset at once: the peer had the most streams open already.",
	})
	s.throttled = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "p2pimg_xchg_requests_throttled_total", Help: "Exchange requests held back: the peer asked faster than the per-peer request rate.",
	})
	if s.cfg.MaxStreams <= 0 {
		s.cfg.MaxStreams = 16
	}
	if s.cfg.RequestRate <= 0 {
		s.cfg.RequestRate, s.cfg.RequestBurst = 10000, 20000
	}
	s.cfg.RequestBurst = max(s.cfg.RequestBurst, 1)
	s.peers = map[peer.ID]*client{}
	cfg.Reg.MustRegister(s.bytesOut, s.chunksServed, s.corruptOnDisk, s.refused, s.throttled)
	return s
}

// admit counts a new stream from p: nil when p has MaxStreams open already.
func (s *Server) admit(p peer.ID) *client {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.peers[p]
	if c == nil {
		c = &client{reqs: rate.NewLimiter(s.cfg.RequestRate, s.cfg.RequestBurst)}
		s.peers[p] = c
	}
	if c.streams >= s.cfg.MaxStreams {
		return nil
	}
	c.streams++
	return c
}

// leave counts a stream from p closed.
func (s *Server) leave(p peer.ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.peers[p]; c != nil {
		if c.streams--; c.streams <= 0 {
			delete(s.peers, p)
		}
	}
}

// violation closes a stream that broke the protocol and counts it
// against the peer.
func (s *Server) violation(st network.Stream, p peer.ID, err error) {
	st.Reset()
	if s.cfg.Conduct != nil {
		s.cfg.Conduct.Violation(p, "serve", err)
	}
}

// Run serves exchange streams until ctx ends; streams in progress end with
// it. Cancellation is not an error.
func (s *Server) Run(ctx context.Context) error {
	s.cfg.Host.SetStreamHandler(Proto, func(st network.Stream) { s.serve(ctx, st) })
	if w, ok := s.cfg.Source.(Watcher); ok {
		s.cfg.Host.SetStreamHandler(HaveProto, func(st network.Stream) { s.serveHave(ctx, w, st) })
		defer s.cfg.Host.RemoveStreamHandler(HaveProto)
	}
	<-ctx.Done()
	s.cfg.Host.RemoveStreamHandler(Proto)
	return nil
}

// serve answers one peer's stream until it ends or ctx does.
func (s *Server) serve(ctx context.Context, st network.Stream) {
	defer st.Close()
	defer context.AfterFunc(ctx, func() { st.Reset() })()
	p := st.Conn().RemotePeer()
	cl := s.admit(p)
	if cl == nil {
		s.refused.Inc()
		st.Reset()
		return
	}
	defer s.leave(p)
	br := bufio.NewReaderSize(st, 16<<10)
	bw := bufio.NewWriterSize(st, 256<<10)
	sent := s.bytesOut.WithLabelValues(p.String())
	buf := make([]byte, 0, 256<<10) // the default maximum chunk size; larger ones get their own
	for {
		st.SetReadDeadline(time.Now().Add(idleTimeout))
		typ, payload, err := readReq(br)
		switch {
		case errors.Is(err, ErrProtocol):
			s.violation(st, p, err)
			return
		case err != nil:
			if !errors.Is(err, io.EOF) {
				st.Reset()
			}
			return
		}
		st.SetReadDeadline(time.Time{})
		if !cl.reqs.Allow() {
			s.throttled.Inc()
			if cl.reqs.Wait(ctx) != nil {
				return
			}
		}
		switch typ {
		case ReqManifest, ReqHave:
			id, err := cid.Cast(payload)
			if err != nil {
				s.violation(st, p, fmt.Errorf("%w: manifest id: %v", ErrProtocol, err))
				return
			}
			var data []byte
			if typ == ReqManifest {
				data, err = s.cfg.Source.ManifestBytes(ctx, id)
			} else {
				data, err = s.cfg.Source.HaveBitmap(ctx, id)
			}
			if err != nil || s.faults.MissingServe {
				writeItem(bw, StatusMissing, nil)
			} else {
				writeItem(bw, StatusOK, data)
			}
		case ReqChunks:
			ids, err := DecodeCIDs(payload)
			if err != nil {
				s.violation(st, p, err)
				return
			}
			if s.faults.StallServe {
				io.Copy(io.Discard, st) // holds the stream, answers nothing, until it closes
				return
			}
			if err := s.chunks(ctx, bw, p, ids, buf, sent); err != nil {
				st.Reset()
				return
			}
		default:
			s.violation(st, p, fmt.Errorf("%w: unknown request type %d", ErrProtocol, typ))
			return
		}
		if err := bw.Flush(); err != nil {
			st.Reset()
			return
		}
	}
}

// chunks writes the answer items of one chunk request.
func (s *Server) chunks(ctx context.Context, bw *bufio.Writer, p peer.ID, ids []cid.Cid, buf []byte, sent prometheus.Counter) error {
	if s.faults.GarbageServe > 0 || s.faults.MissingServe {
		return s.misbehave(bw, len(ids))
	}
	for _, id := range ids {
		data, err := s.cfg.Source.GetInto(ctx, id, buf)
		if err != nil {
			if errors.Is(err, chunk.ErrCorrupt) {
				s.cfg.Log.Warn("not serving a chunk damaged on disk", "cid", id.String())
				s.corruptOnDisk.Inc()
			}
			writeItem(bw, StatusMissing, nil)
			continue
		}
		if s.cfg.Up != nil {
			if err := s.cfg.Up.WaitN(ctx, len(data)); err != nil {
				return err
			}
		}
		if s.faults.CorruptServe && len(data) > 0 {
			data[len(data)/2] ^= 0xff
		}
		if err := writeItem(bw, StatusOK, data); err != nil {
			return err
		}
		s.chunksServed.Inc()
		if s.faults.ChunkTrace != nil {
			s.faults.ChunkTrace(faults.ChunkEvent{Peer: p.String(), CID: id.String()})
		}
		s.cfg.Stats.Add(p, 0, int64(len(data)))
		sent.Add(float64(len(data)))
	}
	return nil
}

// misbehave answers n chunks the way Faults say: garbage items, or none here.
func (s *Server) misbehave(bw *bufio.Writer, n int) error {
	garbage := make([]byte, s.faults.GarbageServe)
	rand.Read(garbage)
	for range n {
		st := byte(StatusOK)
		if s.faults.MissingServe {
			st, garbage = StatusMissing, nil
		}
		if err := writeItem(bw, st, garbage); err != nil {
			return err
		}
	}
	return nil
}
