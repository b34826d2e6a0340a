package gossip

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// SyncProto is the anti-entropy stream: a host compares digests with one
// peer and pulls the records it lacks.
const SyncProto = protocol.ID("/p2pimg/catalog-sync/1.0.0")

// syncTimeout bounds one sync session.
const syncTimeout = 30 * time.Second

// aliveHash is a short name of a peer for liveness reports.
func aliveHash(p peer.ID) uint64 {
	h := sha256.Sum256([]byte(p))
	return binary.BigEndian.Uint64(h[:8])
}

// serveSync answers one peer's sync stream until it ends.
func (s *Service) serveSync(ctx context.Context, st network.Stream) {
	defer st.Close()
	defer context.AfterFunc(ctx, func() { st.Reset() })()
	st.SetDeadline(time.Now().Add(syncTimeout))
	br, bw := bufio.NewReader(st), bufio.NewWriter(st)
	for {
		var q syncReq
		if _, err := readFrame(br, &q); err != nil {
			return // the end of the session, or a peer that broke the format
		}
		if err := checkReq(&q); err != nil {
			s.cfg.Log.Debug("catalogue sync: bad request", "peer", st.Conn().RemotePeer().String(), "err", err)
			st.Reset()
			return
		}
		n, err := writeFrame(bw, s.answer(&q))
		if err != nil {
			st.Reset()
			return
		}
		s.countSync(0, n)
	}
}

func (s *Service) answer(q *syncReq) *syncResp {
	c := s.cfg.Catalog
	switch q.Op {
	case "root":
		root, _ := c.root()
		resp := &syncResp{Root: root[:]}
		if q.Alive {
			resp.Alive = s.aliveReport(time.Now())
		}
		return resp
	case "buckets":
		_, buckets := c.root()
		resp := &syncResp{}
		for _, b := range buckets {
			resp.Buckets = append(resp.Buckets, b[:])
		}
		return resp
	case "sums":
		return &syncResp{Sums: c.summaries(q.Buckets)}
	}
	resp := &syncResp{}
	left := maxPullRecords
	for k, w := range q.Want {
		if left <= 0 {
			resp.Next = append(resp.Next, q.Want[k:]...)
			break
		}
		p, err := peer.Decode(w.Origin)
		if err != nil {
			continue
		}
		rs := c.since(p, w.Since, left)
		resp.Records = append(resp.Records, rs...)
		left -= len(rs)
		if left <= 0 && len(rs) > 0 {
			// Cut here (at a version boundary): the rest of this origin next.
			resp.Next = append(resp.Next, want{Origin: w.Origin, Since: rs[len(rs)-1].Version})
			resp.Next = append(resp.Next, q.Want[k+1:]...)
			break
		}
	}
	return resp
}

// syncWith compares the catalogue with peer p's and pulls what this host
// lacks. It is safe to run at any time; at worst it pulls nothing.
func (s *Service) syncWith(ctx context.Context, p peer.ID, alive bool) (pulled int, err error) {
	ctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	st, err := s.cfg.Host.NewStream(ctx, p, SyncProto)
	if err != nil {
		return 0, fmt.Errorf("catalogue sync with %s: %w", p, err)
	}
	defer st.Close()
	defer context.AfterFunc(ctx, func() { st.Reset() })()
	conn := &syncConn{s: s, br: bufio.NewReader(st), bw: bufio.NewWriter(st)}
	var top syncResp
	if err := conn.ask(&syncReq{Op: "root", Alive: alive}, &top); err != nil {
		return 0, fmt.Errorf("catalogue sync with %s: %w", p, err)
	}
	now := time.Now()
	s.cfg.Catalog.Seen(p, now)
	s.markAlive(top.Alive, now)
	mine, buckets := s.cfg.Catalog.root()
	if bytes.Equal(top.Root, mine[:]) {
		return 0, nil
	}
	if err := conn.ask(&syncReq{Op: "buckets"}, &top); err != nil {
		return 0, fmt.Errorf("catalogue sync with %s: %w", p, err)
	}
	if len(top.Buckets) != numBuckets {
		return 0, fmt.Errorf("catalogue sync with %s: %w: %d buckets", p, errFrame, len(top.Buckets))
	}
	var differ []int
	for b := range buckets {
		if !bytes.Equal(top.Buckets[b], buckets[b][:]) {
			differ = append(differ, b)
		}
	}
	var sums syncResp
	if err := conn.ask(&syncReq{Op: "sums", Buckets: differ}, &sums); err != nil {
		return 0, fmt.Errorf("catalogue sync with %s: %w", p, err)
	}
	wants := s.wants(sums.Sums)
	for rounds := 0; len(wants) > 0 && rounds < 1<<12; rounds++ {
		n := min(len(wants), maxWant)
		got, next, err := conn.pull(wants[:n])
		if err != nil {
			return pulled, fmt.Errorf("catalogue sync with %s: %w", p, err)
		}
		pulled += got
		wants = append(next, wants[n:]...)
	}
	return pulled, nil
}

// wants decides, origin by origin, what to pull from a peer with sums:
// what is newer than this host's newest, or everything of an origin whose
// records differ at the same newest version (a hole). An origin the peer
// is behind on is left: it will pull from here.
func (s *Service) wants(sums []Summary) []want {
	var out []want
	for _, theirs := range sums {
		mine := s.cfg.Catalog.summary(theirs.Origin)
		switch {
		case mine == theirs:
		case theirs.Max > mine.Max:
			out = append(out, want{Origin: theirs.Origin, Since: mine.Max})
		case theirs.Max == mine.Max && theirs.Count >= mine.Count:
			out = append(out, want{Origin: theirs.Origin, Since: -1})
		}
	}
	return out
}

// aliveReport is this host's liveness report: for every host it had a
// sign of within the last aliveWindow (a connection now counts as now),
// a short hash of its id and how long ago, 12 bytes a host. Ages, not
// times: a report passed on never makes a host look younger than it is.
func (s *Service) aliveReport(now time.Time) []byte {
	connected := map[peer.ID]bool{}
	for _, p := range s.cfg.Host.Network().Peers() {
		connected[p] = true
	}
	var out []byte
	add := func(p peer.ID, age time.Duration) {
		if len(out)/12 < maxAlive {
			out = binary.BigEndian.AppendUint64(out, aliveHash(p))
			out = binary.BigEndian.AppendUint32(out, uint32(min(age.Milliseconds(), 1<<32-1)))
		}
	}
	add(s.self, 0)
	for p, seen := range s.cfg.Catalog.seenAll() {
		switch age := now.Sub(seen); {
		case connected[p]:
			add(p, 0)
		case age < aliveWindow && age >= 0:
			add(p, age)
		}
	}
	return out
}

// aliveWindow is how far back a liveness report reaches.
const aliveWindow = 10 * time.Minute

// markAlive takes in a peer's liveness report.
func (s *Service) markAlive(report []byte, now time.Time) {
	if len(report) == 0 || len(report)%12 != 0 || len(report)/12 > maxAlive {
		return
	}
	ages := map[uint64]time.Duration{}
	for b := report; len(b) >= 12; b = b[12:] {
		ages[binary.BigEndian.Uint64(b)] = time.Duration(binary.BigEndian.Uint32(b[8:])) * time.Millisecond
	}
	for p := range s.cfg.Catalog.seenAll() {
		if age, ok := ages[aliveHash(p)]; ok {
			s.cfg.Catalog.Seen(p, now.Add(-age))
		}
	}
}

// syncConn is the asking side of a sync stream.
type syncConn struct {
	s  *Service
	br *bufio.Reader
	bw *bufio.Writer
}

func (c *syncConn) ask(q *syncReq, resp *syncResp) error {
	if _, err := writeFrame(c.bw, q); err != nil {
		return err
	}
	n, err := readFrame(c.br, resp)
	if err != nil {
		return err
	}
	c.s.countSync(n, 0)
	if resp.Err != "" {
		return fmt.Errorf("peer: %s", resp.Err)
	}
	return nil
}

// pull asks for records, checks every one (signature included) and
// applies them.
func (c *syncConn) pull(ws []want) (int, []want, error) {
	var resp syncResp
	if err := c.ask(&syncReq{Op: "pull", Want: ws}, &resp); err != nil {
		return 0, nil, err
	}
	if len(resp.Records) > 2*maxPullRecords || len(resp.Next) > len(ws) {
		return 0, nil, fmt.Errorf("%w: %d records, %d origins to continue in one answer", errFrame, len(resp.Records), len(resp.Next))
	}
	var ok []*checked
	now := time.Now()
	for _, r := range resp.Records {
		if !slices.ContainsFunc(ws, func(w want) bool { return w.Origin == r.Origin }) {
			return 0, nil, fmt.Errorf("%w: a record of %.60q, which was not asked for", errFrame, r.Origin)
		}
		ck, err := CheckRecord(r, c.s.cfg.Cluster, now)
		if err != nil {
			c.s.refuse("pulled", err)
			continue // one bad record does not keep the good ones out
		}
		ok = append(ok, ck)
	}
	for _, w := range resp.Next {
		if !slices.ContainsFunc(ws, func(x want) bool { return x.Origin == w.Origin }) {
			return 0, nil, fmt.Errorf("%w: continue with %.60q, which was not asked for", errFrame, w.Origin)
		}
	}
	return c.s.cfg.Catalog.apply(ok), resp.Next, nil
}
