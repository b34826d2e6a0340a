package node

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"slices"
	"sort"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/license"
	"github.com/p2pimg/p2pimg/node/api"
)

// seats is this host's side of licence seats: the grants it holds (each
// valid until its own lease end, on this host's monotonic clock), the
// latest seat table it heard of, and where to send requests.
type seats struct {
	session string // this run of the daemon: a restart is a new holder

	mu      sync.Mutex
	grants  map[uint64]*grant
	view    *license.Table // latest seat table gossiped by a keeper
	hint    peer.ID        // the keeper that answered last
	changed chan struct{}  // closed and replaced when the view changes
	journal *os.File       // test: every valid interval, for the checker

	// A claim for a consumer waits for the keepers to confirm the
	// consumer's previous release: a release still in flight must not
	// free the seat a newer claim got back. pending holds the releases not
	// confirmed yet, by product and consumer (consumer "*": a whole seat,
	// released by token). locks orders the claims and releases of one
	// product on this host: a whole-seat release excludes them all, the
	// others exclude only their consumer's.
	pending map[string]seatReq
	keyMu   sync.Mutex
	locks   map[string]*sync.RWMutex
}

func seatKey(product, consumer string) string { return product + "\x00" + consumer }

func (s *seats) rw(key string) *sync.RWMutex {
	s.keyMu.Lock()
	defer s.keyMu.Unlock()
	m := s.locks[key]
	if m == nil {
		m = &sync.RWMutex{}
		s.locks[key] = m
	}
	return m
}

// lock orders an operation on product for consumer ("*": every consumer,
// a whole seat). It returns the unlock.
func (s *seats) lock(product, consumer string) func() {
	all := s.rw(seatKey(product, "*"))
	if consumer == "*" {
		all.Lock()
		return all.Unlock
	}
	all.RLock()
	one := s.rw(seatKey(product, consumer))
	one.Lock()
	return func() { one.Unlock(); all.RUnlock() }
}

// confirmRelease re-sends the consumer's unconfirmed release, if any, and
// succeeds once the keepers have applied it.
func (n *Node) confirmRelease(ctx context.Context, key string) error {
	n.seats.mu.Lock()
	sr, ok := n.seats.pending[key]
	n.seats.mu.Unlock()
	if !ok {
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, decideTimeout)
	defer cancel()
	if _, err := n.seatCall(rctx, sr); err != nil {
		return fmt.Errorf("the previous release of this consumer is not confirmed by the keepers yet: %w", err)
	}
	n.seats.mu.Lock()
	delete(n.seats.pending, key)
	n.seats.mu.Unlock()
	return nil
}

type grant struct {
	seat  license.Seat
	until time.Time // monotonic: this host treats the grant as valid until then
}

func newSeats() *seats {
	b := make([]byte, 8)
	rand.Read(b)
	return &seats{session: hex.EncodeToString(b), grants: map[uint64]*grant{}, changed: make(chan struct{}),
		pending: map[string]seatReq{}, locks: map[string]*sync.RWMutex{}}
}

func (n *Node) seatTopicName() string { return "p2pimg/" + n.cfg.Cluster.Name + "/seats/1" }

// seatsChanged runs after the local keeper applied a command: the seat
// gossip loop picks the table up (a burst of changes at once), gossips it
// and wakes local waiters.
func (n *Node) seatsChanged() {
	select {
	case n.seatKick <- struct{}{}:
	default:
	}
}

// adoptTable keeps t if it is newer than the view.
func (n *Node) adoptTable(t *license.Table) {
	s := n.seats
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.view != nil && t.Index <= s.view.Index {
		return
	}
	s.view = t
	close(s.changed)
	s.changed = make(chan struct{})
}

// validateSeats accepts seat tables gossiped by keepers only, each newer
// than the last.
func (n *Node) validateSeats(_ context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	origin := msg.GetFrom()
	if !n.cfg.Cluster.IsKeeper(origin) {
		n.log.Warn("seat table from a host that is not a keeper rejected", "origin", origin.String(), "via", from.String())
		return pubsub.ValidationReject
	}
	t, err := license.UnmarshalTable(msg.Data)
	if err != nil {
		n.log.Warn("seat gossip rejected", "origin", origin.String(), "err", err)
		return pubsub.ValidationReject
	}
	n.seats.mu.Lock()
	old := n.seats.view != nil && t.Index <= n.seats.view.Index
	n.seats.mu.Unlock()
	if old && origin != n.host.ID() {
		return pubsub.ValidationIgnore
	}
	msg.ValidatorData = t
	return pubsub.ValidationAccept
}

// seatGossip publishes the keeper's table on every change and every
// announce interval, and takes in the tables of other keepers.
func (n *Node) seatGossip(ctx context.Context, topic *pubsub.Topic, sub *pubsub.Subscription) {
	go func() {
		for {
			msg, err := sub.Next(ctx)
			if err != nil {
				return
			}
			if t, ok := msg.ValidatorData.(*license.Table); ok {
				n.adoptTable(t)
			}
		}
	}()
	k := n.keeper.Load()
	if k == nil {
		<-ctx.Done()
		return
	}
	t := time.NewTicker(n.cfg.AnnounceInterval)
	defer t.Stop()
	var last uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.seatKick:
			// Let a burst of commands land: one table for all of them.
			select {
			case <-ctx.Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		case <-t.C:
			last = 0
		}
		tab := k.fsm.table()
		n.adoptTable(tab)
		if tab.Index == last {
			continue
		}
		last = tab.Index
		if err := topic.Publish(ctx, license.MarshalTable(tab)); err != nil && ctx.Err() == nil {
			n.log.Warn("seat gossip", "err", err)
		}
	}
}

// seatCall sends req to the keepers' leader: the last keeper that
// answered first, then every keeper, following leader hints, until one
// decides or ctx ends.
func (n *Node) seatCall(ctx context.Context, req seatReq) (*seatResp, error) {
	keepers := n.cfg.Cluster.keepers
	if len(keepers) == 0 {
		return nil, badRequestf("this cluster has no keepers: licence seats need `keepers = [...]` in the cluster file")
	}
	var lastErr error
	backoff := 20 * time.Millisecond
	for {
		n.seats.mu.Lock()
		queue := append([]peer.ID{n.seats.hint}, keepers...)
		n.seats.mu.Unlock()
		tried := map[peer.ID]bool{"": true}
		for len(queue) > 0 {
			k := queue[0]
			queue = queue[1:]
			if tried[k] {
				continue
			}
			tried[k] = true
			resp, err := n.askKeeper(ctx, k, req)
			switch {
			case err != nil:
				lastErr = fmt.Errorf("keeper %s: %w", shortID(k), err)
			case resp.NotLeader:
				lastErr = fmt.Errorf("keeper %s is not the leader and knows none (no keeper majority?)", shortID(k))
				if id, err := peer.Decode(resp.Leader); err == nil && n.cfg.Cluster.IsKeeper(id) {
					queue = append([]peer.ID{id}, queue...)
				}
			case resp.Err != "":
				lastErr = errors.New(resp.Err)
			default:
				n.seats.mu.Lock()
				n.seats.hint = k
				n.seats.mu.Unlock()
				return resp, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no keeper majority decided (%d keepers; last: %v): %w", len(keepers), lastErr, ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

func (n *Node) askKeeper(ctx context.Context, k peer.ID, req seatReq) (*seatResp, error) {
	if k == n.host.ID() {
		kp := n.keeper.Load()
		if kp == nil {
			return nil, errors.New("this host's keeper is not running")
		}
		r := kp.serve(k, req)
		return &r, nil
	}
	sctx, cancel := context.WithTimeout(ctx, seatDeadline)
	defer cancel()
	s, err := n.host.NewStream(sctx, k, seatProto)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	if dl, ok := sctx.Deadline(); ok {
		s.SetDeadline(dl)
	}
	defer context.AfterFunc(sctx, func() { s.Reset() })()
	if err := writeMsg(s, req); err != nil {
		s.Reset()
		return nil, err
	}
	var resp seatResp
	if err := readMsg(bufio.NewReader(s), 16<<20, &resp); err != nil {
		s.Reset()
		return nil, err
	}
	return &resp, nil
}

// journalLine records one interval (or the end of a grant) for the fault
// tests' checker.
type journalLine struct {
	Product string    `json:"product,omitempty"`
	Holder  string    `json:"holder"`
	Token   uint64    `json:"token"`
	From    time.Time `json:"from,omitzero"`
	To      time.Time `json:"to,omitzero"`
	End     time.Time `json:"end,omitzero"` // the holder stopped treating it as valid
}

// ReadSeatJournal turns a seat journal (Config.SeatJournal) into the
// intervals during which the host treated each grant as valid: each
// recorded lease, cut short where the host stopped using the grant. A
// torn last line (the host was killed while writing) is skipped.
func ReadSeatJournal(r io.Reader) ([]license.Interval, error) {
	var lines []journalLine
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		var l journalLine
		if json.Unmarshal(sc.Bytes(), &l) == nil {
			lines = append(lines, l)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	var out []license.Interval
	for i, l := range lines {
		if l.End.IsZero() {
			iv := license.Interval{Product: l.Product, Holder: l.Holder, Token: l.Token, From: l.From, To: l.To}
			// The first end of this grant recorded after the interval began cuts it.
			for _, e := range lines[i+1:] {
				if !e.End.IsZero() && e.Token == l.Token && e.Holder == l.Holder {
					if e.End.Before(iv.To) {
						iv.To = e.End
					}
					break
				}
			}
			out = append(out, iv)
		}
	}
	return out, nil
}

func (n *Node) journal(l journalLine) {
	if n.seats.journal == nil {
		return
	}
	l.Holder = n.host.ID().String()
	b, _ := json.Marshal(l)
	n.seats.journal.Write(append(b, '\n'))
}

// hold records a grant from a claim sent at sent.
func (n *Node) hold(s license.Seat, sent time.Time) *grant {
	n.seats.mu.Lock()
	defer n.seats.mu.Unlock()
	g := n.seats.grants[s.Token]
	if g == nil {
		g = &grant{}
		n.seats.grants[s.Token] = g
	}
	g.seat = s
	n.extendLocked(g, sent)
	return g
}

// extendLocked moves a held grant's end to the lease end of a claim or
// renewal sent at sent. It never brings back a grant that was released
// meanwhile: the caller found g in the grants under the same lock.
func (n *Node) extendLocked(g *grant, sent time.Time) {
	end := n.cfg.Cluster.SeatRules().LeaseEnd(sent)
	now := time.Now()
	if end.After(g.until) {
		g.until = end
	}
	if end.After(now) {
		n.journal(journalLine{Product: g.seat.Product, Token: g.seat.Token, From: now, To: end.Round(0)})
	}
}

func (n *Node) grantAPI(g *grant) api.Grant {
	return api.Grant{
		Product: g.seat.Product, Seat: g.seat.N, Token: g.seat.Token, Host: g.seat.Host,
		Consumers: g.seat.Consumers, ValidUntil: g.until.Round(0).UTC(),
		Valid: time.Now().Before(g.until),
	}
}

// decideTimeout bounds one request to the keepers: without a majority
// nothing is decided, and the caller hears so.
const decideTimeout = 5 * time.Second

// Claim asks the keepers for a seat of product for consumer. With wait,
// it retries while no seat is free, until ctx ends.
func (n *Node) Claim(ctx context.Context, req api.ClaimRequest) (*api.Grant, error) {
	if err := license.CheckProduct(req.Product); err != nil {
		return nil, badRequest(err)
	}
	if err := license.CheckConsumer(req.Consumer); err != nil {
		return nil, badRequest(err)
	}
	key := seatKey(req.Product, req.Consumer)
	defer n.seats.lock(req.Product, req.Consumer)()
	for {
		for _, k := range []string{seatKey(req.Product, "*"), key} {
			if err := n.confirmRelease(ctx, k); err != nil {
				return nil, fmt.Errorf("claim %s for %s: %w", req.Product, req.Consumer, err)
			}
		}
		n.seats.mu.Lock()
		changed := n.seats.changed
		n.seats.mu.Unlock()
		sent := time.Now()
		actx, cancel := context.WithTimeout(ctx, decideTimeout)
		resp, err := n.seatCall(actx, seatReq{Op: license.OpClaim, Product: req.Product, Consumer: req.Consumer, Session: n.seats.session})
		cancel()
		if err != nil {
			if req.Wait && ctx.Err() == nil {
				n.log.Warn("claim: waiting for a keeper majority", "product", req.Product, "err", err)
				continue
			}
			return nil, fmt.Errorf("claim %s for %s: %w", req.Product, req.Consumer, err)
		}
		if r := resp.Result; r.Code == "" && r.Seat != nil {
			if ctx.Err() != nil {
				// Nobody is waiting for this grant: give it back, and have
				// the next claim of the consumer confirm that first.
				n.seats.mu.Lock()
				n.seats.pending[key] = seatReq{Op: license.OpRelease, Product: req.Product, Consumer: req.Consumer, Session: n.seats.session}
				n.seats.mu.Unlock()
				return nil, ctx.Err()
			}
			g := n.hold(*r.Seat, sent)
			n.log.Info("seat granted", "product", req.Product, "consumer", req.Consumer, "seat", r.Seat.N, "token", r.Seat.Token)
			n.seats.mu.Lock()
			out := n.grantAPI(g)
			n.seats.mu.Unlock()
			return &out, nil
		}
		err = fmt.Errorf("claim %s for %s: %s", req.Product, req.Consumer, resp.Result.Err)
		if resp.Result.Code != license.CodeNoSeat {
			return nil, badRequest(err)
		}
		if !req.Wait {
			return nil, &codedError{api.CodeConflict, err}
		}
		select {
		case <-ctx.Done():
			return nil, &codedError{api.CodeConflict, fmt.Errorf("%w; gave up waiting: %v", err, ctx.Err())}
		case <-changed:
		case <-time.After(time.Second):
		}
		// Many waiters wake on one change: spread their claims a little.
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(10+mrand.IntN(40)) * time.Millisecond):
		}
	}
}

// Release gives up consumer's use of its seat of product (or the whole
// seat with token). The host stops treating it as valid before it asks the
// keepers, so a failed release only leaves the seat to expire.
func (n *Node) Release(ctx context.Context, req api.ReleaseRequest) (*api.ReleaseResult, error) {
	sr := seatReq{Op: license.OpRelease, Product: req.Product, Consumer: req.Consumer, Session: n.seats.session}
	if req.Token != 0 {
		sr.Tokens = []uint64{req.Token}
	} else if err := license.CheckConsumer(req.Consumer); err != nil {
		return nil, badRequest(err)
	}
	// Order the release with the claims it could race; a whole seat is
	// locked by product (a token names a seat of this host's product).
	product, consumer := req.Product, req.Consumer
	if req.Token != 0 {
		n.seats.mu.Lock()
		if g := n.seats.grants[req.Token]; g != nil {
			product = g.seat.Product
		} else if n.seats.view != nil {
			if s, ok := n.seats.view.Lookup(req.Token); ok {
				product = s.Product
			}
		}
		n.seats.mu.Unlock()
		consumer = "*"
	}
	key := seatKey(product, consumer)
	if product != "" {
		defer n.seats.lock(product, consumer)()
	}
	n.seats.mu.Lock()
	for tok, g := range n.seats.grants {
		if tok == req.Token || (g.seat.Product == req.Product && slices.Contains(g.seat.Consumers, req.Consumer)) {
			g.seat.Consumers = slices.DeleteFunc(slices.Clone(g.seat.Consumers), func(c string) bool { return c == req.Consumer || req.Token != 0 })
			if len(g.seat.Consumers) == 0 {
				delete(n.seats.grants, tok)
				n.journal(journalLine{Token: tok, End: time.Now()})
			}
		}
	}
	if product != "" {
		n.seats.pending[key] = sr
	}
	n.seats.mu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, decideTimeout)
	defer cancel()
	resp, err := n.seatCall(rctx, sr)
	if err != nil {
		return nil, fmt.Errorf("release: %w (this host no longer uses the seat; the keepers free it when its lease ends, and the next claim of this consumer first confirms the release)", err)
	}
	n.seats.mu.Lock()
	delete(n.seats.pending, key)
	n.seats.mu.Unlock()
	out := &api.ReleaseResult{}
	for _, s := range resp.Result.Freed {
		out.Freed = append(out.Freed, api.Grant{Product: s.Product, Seat: s.N, Token: s.Token, Host: s.Host})
	}
	return out, nil
}

// renewer renews every held grant each third of the TTL. A grant the
// keepers no longer have is dropped; one that cannot be renewed in time
// simply stops being valid here.
func (n *Node) renewer(ctx context.Context) {
	rules := n.cfg.Cluster.SeatRules()
	t := time.NewTicker(rules.TTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n.seats.mu.Lock()
		var toks []uint64
		for tok := range n.seats.grants {
			toks = append(toks, tok)
		}
		n.seats.mu.Unlock()
		if len(toks) == 0 {
			continue
		}
		sort.Slice(toks, func(i, j int) bool { return toks[i] < toks[j] })
		sent := time.Now()
		rctx, cancel := context.WithTimeout(ctx, rules.TTL/3)
		resp, err := n.seatCall(rctx, seatReq{Op: license.OpRenew, Tokens: toks, Session: n.seats.session})
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				n.log.Warn("seat renewal failed; grants lapse at their lease end", "err", err)
			}
			continue
		}
		n.seats.mu.Lock()
		for _, tok := range toks {
			g := n.seats.grants[tok]
			if g == nil {
				continue // released meanwhile: it stays released
			}
			if slices.Contains(resp.Result.Lost, tok) {
				delete(n.seats.grants, tok)
				n.journal(journalLine{Token: tok, End: time.Now()})
				n.log.Warn("seat lost: the keepers freed it (its lease ran out)", "product", g.seat.Product, "seat", g.seat.N, "token", tok)
				continue
			}
			n.extendLocked(g, sent)
		}
		n.seats.mu.Unlock()
	}
}

// Check reports whether the grant with token is current: the keepers'
// leader still has it and, when this host holds it, this host's own lease
// has not run out.
func (n *Node) Check(ctx context.Context, token uint64) (*api.CheckResult, error) {
	cctx, cancel := context.WithTimeout(ctx, decideTimeout)
	defer cancel()
	resp, err := n.seatCall(cctx, seatReq{Op: opCheck, Tokens: []uint64{token}})
	if err != nil {
		return nil, fmt.Errorf("check token %d: %w", token, err)
	}
	out := &api.CheckResult{Token: token, Current: resp.Result.Code == "", Reason: resp.Result.Err}
	if s := resp.Seat; s != nil {
		out.Seat = &api.Grant{Product: s.Product, Seat: s.N, Token: s.Token, Host: s.Host, Consumers: s.Consumers, ValidUntil: time.Unix(0, s.Expires).UTC()}
		if out.Current && s.Host == n.host.ID().String() {
			n.seats.mu.Lock()
			g := n.seats.grants[token]
			switch {
			case s.Session != n.seats.session:
				out.Current, out.Reason = false, fmt.Sprintf("token %d was granted to an earlier run of this daemon: claim again", token)
			case g == nil:
				out.Current, out.Reason = false, fmt.Sprintf("token %d is no longer used on this host", token)
			case !time.Now().Before(g.until):
				out.Current, out.Reason = false, fmt.Sprintf("token %d: this host's lease ran out (not renewed in time)", token)
			default:
				out.Seat.ValidUntil = g.until.Round(0).UTC()
			}
			n.seats.mu.Unlock()
		}
	}
	return out, nil
}

// InstallLicense checks a licence here (with the reason when it is bad)
// and has the keepers install it.
func (n *Node) InstallLicense(ctx context.Context, text string) (*api.LicenseInfo, error) {
	l, err := license.Parse([]byte(text))
	if err != nil {
		return nil, badRequest(err)
	}
	if err := l.Verify(n.cfg.Cluster.SeatRules().Trusted, time.Now()); err != nil {
		return nil, badRequest(err)
	}
	ictx, cancel := context.WithTimeout(ctx, decideTimeout)
	defer cancel()
	resp, err := n.seatCall(ictx, seatReq{Op: license.OpInstall, License: l.Marshal()})
	if err != nil {
		return nil, fmt.Errorf("install licence %s: %w", l.ID(), err)
	}
	if resp.Result.Code != "" {
		return nil, badRequest(errors.New(resp.Result.Err))
	}
	info := licenseInfo(l, nil)
	return &info, nil
}

func licenseInfo(l *license.License, seats []license.Seat) api.LicenseInfo {
	info := api.LicenseInfo{ID: l.ID(), Product: l.Product, Seats: l.Seats, Share: l.Share, KeyID: l.KeyID(),
		Issued: time.Unix(l.Issued, 0).UTC()}
	if l.Expires != 0 {
		info.Expires = time.Unix(l.Expires, 0).UTC()
	}
	for _, s := range seats {
		if s.Product == l.Product {
			info.Used++
		}
	}
	info.Free = max(0, l.Seats-info.Used)
	return info
}

// Licenses is the seat table as this host knows it: a keeper's own, else
// the last one gossiped (asking a keeper when it has heard none yet).
func (n *Node) Licenses(ctx context.Context) (*api.LicenseList, error) {
	n.seats.mu.Lock()
	t := n.seats.view
	n.seats.mu.Unlock()
	if k := n.keeper.Load(); k != nil {
		if own := k.fsm.table(); t == nil || own.Index > t.Index {
			t = own // a keeper's own table, unless gossip brought a newer one
		}
	}
	if t == nil {
		if len(n.cfg.Cluster.keepers) == 0 {
			return &api.LicenseList{}, nil
		}
		resp, err := n.seatCall(ctx, seatReq{Op: opTable})
		if err != nil {
			return nil, err
		}
		if t, err = license.UnmarshalTable(resp.Table); err != nil {
			return nil, err
		}
		n.adoptTable(t)
	}
	out := &api.LicenseList{Index: t.Index, Leader: n.seatLeader()}
	for _, l := range t.Licenses {
		out.Licenses = append(out.Licenses, licenseInfo(l, t.Seats))
	}
	sort.Slice(out.Licenses, func(i, j int) bool { return out.Licenses[i].Product < out.Licenses[j].Product })
	for _, s := range t.Seats {
		out.Holders = append(out.Holders, api.Grant{Product: s.Product, Seat: s.N, Token: s.Token, Host: s.Host,
			Consumers: s.Consumers, ValidUntil: time.Unix(0, s.Expires).UTC()})
	}
	n.seats.mu.Lock()
	for _, g := range n.seats.grants {
		out.Held = append(out.Held, n.grantAPI(g))
	}
	n.seats.mu.Unlock()
	sort.Slice(out.Held, func(i, j int) bool { return out.Held[i].Token < out.Held[j].Token })
	return out, nil
}

// seatLeader is the keepers' leader: from Raft on a keeper, else the
// keeper that last decided a request of this host.
func (n *Node) seatLeader() string {
	if k := n.keeper.Load(); k != nil {
		_, id := k.raft.LeaderWithID()
		return string(id)
	}
	n.seats.mu.Lock()
	defer n.seats.mu.Unlock()
	return n.seats.hint.String()
}

// seatConsumer is the consumer id under which an activated layer holds its
// seat on a host.
func seatConsumer(layer string) string { return "layer:" + layer }

// layerProduct is the licensed product the activated layer needs, from its
// signed mapping ("" when none).
func (n *Node) layerProduct(a Activation) string {
	if mp, ok := n.catalog.lookup(a.Layer); ok && mp.CID == a.CID {
		return mp.Product
	}
	if name, err := chunk.ParseName(a.Layer); err == nil {
		if l, err := n.db.GetLayer(context.Background(), name); err == nil && l.CID == a.CID {
			return l.Product
		}
	}
	return ""
}

// holdsSeat reports whether this host holds a valid seat of product for
// consumer.
func (n *Node) holdsSeat(product, consumer string) bool {
	n.seats.mu.Lock()
	defer n.seats.mu.Unlock()
	for _, g := range n.seats.grants {
		if g.seat.Product == product && slices.Contains(g.seat.Consumers, consumer) && time.Now().Before(g.until) {
			return true
		}
	}
	return false
}

// claimLayerSeat claims the seat an activation needs. While none is free
// the host reports waiting-for-seat (and the reconciler tries again each
// second); other failures report failed.
func (n *Node) claimLayerSeat(ctx context.Context, e *exposed, a Activation, product string) bool {
	cctx, cancel := context.WithTimeout(ctx, decideTimeout)
	defer cancel()
	_, err := n.Claim(cctx, api.ClaimRequest{Product: product, Consumer: seatConsumer(a.Layer)})
	if err == nil {
		e.Product = product
		return true
	}
	st := HostState{Layer: e.Layer, CID: a.CID, At: a.At, State: StateWaitingSeat, Time: a.Time, Mode: n.exposeMode(), Detail: err.Error()}
	var ce *codedError
	if !errors.As(err, &ce) || ce.code != api.CodeConflict {
		if ctx.Err() != nil {
			return false
		}
		st.State = StateFailed
		e.Failed = time.Now()
	}
	if cur, ok := n.stateOf(e.Layer); !ok || cur != st {
		n.setStates(st)
		n.announceSoon()
	}
	return false
}

// releaseLayerSeat gives back the seat a deactivated layer held.
func (n *Node) releaseLayerSeat(ctx context.Context, e *exposed) {
	if e.Product == "" {
		return
	}
	if _, err := n.Release(ctx, api.ReleaseRequest{Product: e.Product, Consumer: seatConsumer(e.Layer)}); err != nil {
		n.log.Warn("seat release of a deactivated layer failed; it lapses at its lease end", "layer", e.Layer, "err", err)
	}
	e.Product = ""
}
