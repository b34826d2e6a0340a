package seats

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/p2pimg/p2pimg/license"
	"github.com/p2pimg/p2pimg/node/api"
)

func (sv *Service) rw(key string) *sync.RWMutex {
	sv.keyMu.Lock()
	defer sv.keyMu.Unlock()
	m := sv.locks[key]
	if m == nil {
		m = &sync.RWMutex{}
		sv.locks[key] = m
	}
	return m
}

// lock orders an operation on product for consumer ("*": every consumer,
// a whole seat). It returns the unlock.
func (sv *Service) lock(product, consumer string) func() {
	all := sv.rw(seatKey(product, "*"))
	if consumer == "*" {
		all.Lock()
		return all.Unlock
	}
	all.RLock()
	one := sv.rw(seatKey(product, consumer))
	one.Lock()
	return func() { one.Unlock(); all.RUnlock() }
}

// confirmRelease re-sends the consumer's unconfirmed release, if any, and
// succeeds once the keepers have applied it.
func (sv *Service) confirmRelease(ctx context.Context, key string) error {
	sv.mu.Lock()
	sr, ok := sv.pending[key]
	sv.mu.Unlock()
	if !ok {
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, decideTimeout)
	defer cancel()
	if _, err := sv.seatCall(rctx, sr); err != nil {
		return fmt.Errorf("the previous release of this consumer is not confirmed by the keepers yet: %w", err)
	}
	sv.mu.Lock()
	delete(sv.pending, key)
	sv.mu.Unlock()
	return nil
}

// hold records a grant from a claim sent at sent.
func (sv *Service) hold(s license.Seat, sent time.Time) *grant {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	g := sv.grants[s.Token]
	if g == nil {
		g = &grant{}
		sv.grants[s.Token] = g
	}
	g.seat = s
	sv.extendLocked(g, sent)
	return g
}

// extendLocked moves a held grant's end to the lease end of a claim or
// renewal sent at sent. It never brings back a grant that was released
// meanwhile: the caller found g in the grants under the same lock.
func (sv *Service) extendLocked(g *grant, sent time.Time) {
	end := sv.cfg.Cluster.SeatRules().LeaseEnd(sent)
	now := time.Now()
	if end.After(g.until) {
		g.until = end
	}
	if end.After(now) {
		sv.record(journalLine{Interval: license.Interval{Product: g.seat.Product, Token: g.seat.Token, From: now, To: end.Round(0)}})
	}
}

func (sv *Service) grantAPI(g *grant) api.Grant {
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
func (sv *Service) Claim(ctx context.Context, req api.ClaimRequest) (*api.Grant, error) {
	if err := license.CheckProduct(req.Product); err != nil {
		return nil, api.BadRequest(err)
	}
	if err := license.CheckConsumer(req.Consumer); err != nil {
		return nil, api.BadRequest(err)
	}
	key := seatKey(req.Product, req.Consumer)
	defer sv.lock(req.Product, req.Consumer)()
	for {
		for _, k := range []string{seatKey(req.Product, "*"), key} {
			if err := sv.confirmRelease(ctx, k); err != nil {
				return nil, fmt.Errorf("claim %s for %s: %w", req.Product, req.Consumer, err)
			}
		}
		sv.mu.Lock()
		changed := sv.changed
		sv.mu.Unlock()
		sent := time.Now()
		actx, cancel := context.WithTimeout(ctx, decideTimeout)
		resp, err := sv.seatCall(actx, seatReq{Op: license.OpClaim, Product: req.Product, Consumer: req.Consumer, Session: sv.session})
		cancel()
		if err != nil {
			if req.Wait && ctx.Err() == nil {
				sv.cfg.Log.Warn("claim: waiting for a keeper majority", "product", req.Product, "err", err)
				continue
			}
			return nil, fmt.Errorf("claim %s for %s: %w", req.Product, req.Consumer, err)
		}
		if r := resp.Result; r.Code == "" && r.Seat != nil {
			if ctx.Err() != nil {
				// Nobody is waiting for this grant: give it back, and have
				// the next claim of the consumer confirm that first.
				sv.mu.Lock()
				sv.pending[key] = seatReq{Op: license.OpRelease, Product: req.Product, Consumer: req.Consumer, Session: sv.session}
				sv.mu.Unlock()
				return nil, ctx.Err()
			}
			g := sv.hold(*r.Seat, sent)
			sv.cfg.Log.Info("seat granted", "product", req.Product, "consumer", req.Consumer, "seat", r.Seat.N, "token", r.Seat.Token)
			sv.mu.Lock()
			out := sv.grantAPI(g)
			sv.mu.Unlock()
			return &out, nil
		}
		err = fmt.Errorf("claim %s for %s: %s", req.Product, req.Consumer, resp.Result.Err)
		if resp.Result.Code != license.CodeNoSeat {
			return nil, api.BadRequest(err)
		}
		if !req.Wait {
			return nil, api.Conflict(err)
		}
		select {
		case <-ctx.Done():
			return nil, api.Conflict(fmt.Errorf("%w; gave up waiting: %v", err, ctx.Err()))
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
func (sv *Service) Release(ctx context.Context, req api.ReleaseRequest) (*api.ReleaseResult, error) {
	sr := seatReq{Op: license.OpRelease, Product: req.Product, Consumer: req.Consumer, Session: sv.session}
	if req.Token != 0 {
		sr.Tokens = []uint64{req.Token}
	} else if err := license.CheckConsumer(req.Consumer); err != nil {
		return nil, api.BadRequest(err)
	}
	// Order the release with the claims it could race; a whole seat is
	// locked by product (a token names a seat of this host's product; one
	// this host does not hold is not its to release, and the keepers
	// refuse nothing for it).
	product, consumer := req.Product, req.Consumer
	if req.Token != 0 {
		sv.mu.Lock()
		if g := sv.grants[req.Token]; g != nil {
			product = g.seat.Product
		}
		sv.mu.Unlock()
		consumer = "*"
	}
	key := seatKey(product, consumer)
	if product != "" {
		defer sv.lock(product, consumer)()
	}
	sv.mu.Lock()
	for tok, g := range sv.grants {
		if tok == req.Token || (g.seat.Product == req.Product && slices.Contains(g.seat.Consumers, req.Consumer)) {
			g.seat.Consumers = slices.DeleteFunc(slices.Clone(g.seat.Consumers), func(c string) bool { return c == req.Consumer || req.Token != 0 })
			if len(g.seat.Consumers) == 0 {
				delete(sv.grants, tok)
				sv.record(journalLine{Interval: license.Interval{Token: tok}, End: time.Now()})
			}
		}
	}
	if product != "" {
		sv.pending[key] = sr
	}
	sv.mu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, decideTimeout)
	defer cancel()
	resp, err := sv.seatCall(rctx, sr)
	if err != nil {
		return nil, fmt.Errorf("release: %w (this host no longer uses the seat; the keepers free it when its lease ends, and the next claim of this consumer first confirms the release)", err)
	}
	sv.mu.Lock()
	delete(sv.pending, key)
	sv.mu.Unlock()
	out := &api.ReleaseResult{}
	for _, s := range resp.Result.Freed {
		out.Freed = append(out.Freed, api.Grant{Product: s.Product, Seat: s.N, Token: s.Token, Host: s.Host})
	}
	return out, nil
}

// renewer renews every held grant each third of the TTL. A grant the
// keepers no longer have is dropped; one that cannot be renewed in time
// simply stops being valid here.
func (sv *Service) renewer(ctx context.Context) {
	rules := sv.cfg.Cluster.SeatRules()
	t := time.NewTicker(rules.TTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sv.mu.Lock()
		var toks []uint64
		for tok := range sv.grants {
			toks = append(toks, tok)
		}
		sv.mu.Unlock()
		if len(toks) == 0 {
			continue
		}
		sort.Slice(toks, func(i, j int) bool { return toks[i] < toks[j] })
		// The batches go at once: one after another, a host holding many
		// seats on a busy leader took longer than a lease to renew them all.
		// A renewal may take up to two thirds of the TTL: a late answer still
		// extends the lease from when it was sent.
		var wg sync.WaitGroup
		for len(toks) > 0 {
			n := min(len(toks), maxRenew)
			batch := toks[:n]
			wg.Go(func() { sv.renew(ctx, batch, 2*rules.TTL/3) })
			toks = toks[n:]
		}
		wg.Wait()
	}
}

// maxRenew bounds the tokens of one renewal (a seat message carries at
// most 4096 of anything).
const maxRenew = 2048

// renew renews the grants with toks, within d.
func (sv *Service) renew(ctx context.Context, toks []uint64, d time.Duration) {
	sent := time.Now()
	rctx, cancel := context.WithTimeout(ctx, d)
	resp, err := sv.seatCall(rctx, seatReq{Op: license.OpRenew, Tokens: toks, Session: sv.session})
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			sv.cfg.Log.Warn("seat renewal failed; grants lapse at their lease end", "err", err)
		}
		return
	}
	sv.mu.Lock()
	defer sv.mu.Unlock()
	for _, tok := range toks {
		g := sv.grants[tok]
		if g == nil {
			continue // released meanwhile: it stays released
		}
		if slices.Contains(resp.Result.Lost, tok) {
			delete(sv.grants, tok)
			sv.record(journalLine{Interval: license.Interval{Token: tok}, End: time.Now()})
			sv.cfg.Log.Warn("seat lost: the keepers freed it (its lease ran out)", "product", g.seat.Product, "seat", g.seat.N, "token", tok)
			continue
		}
		sv.extendLocked(g, sent)
	}
}

// Check reports whether the grant with token is current: the keepers'
// leader still has it and, when this host holds it, this host's own lease
// has not run out.
func (sv *Service) Check(ctx context.Context, token uint64) (*api.CheckResult, error) {
	cctx, cancel := context.WithTimeout(ctx, decideTimeout)
	defer cancel()
	resp, err := sv.seatCall(cctx, seatReq{Op: opCheck, Tokens: []uint64{token}})
	if err != nil {
		return nil, fmt.Errorf("check token %d: %w", token, err)
	}
	out := &api.CheckResult{Token: token, Current: resp.Result.Code == "", Reason: resp.Result.Err}
	if s := resp.Seat; s != nil {
		out.Seat = &api.Grant{Product: s.Product, Seat: s.N, Token: s.Token, Host: s.Host, Consumers: s.Consumers, ValidUntil: time.Unix(0, s.Expires).UTC()}
		if out.Current && s.Host == sv.cfg.Host.ID().String() {
			sv.mu.Lock()
			g := sv.grants[token]
			switch {
			case s.Session != sv.session:
				out.Current, out.Reason = false, fmt.Sprintf("token %d was granted to an earlier run of this daemon: claim again", token)
			case g == nil:
				out.Current, out.Reason = false, fmt.Sprintf("token %d is no longer used on this host", token)
			case !time.Now().Before(g.until):
				out.Current, out.Reason = false, fmt.Sprintf("token %d: this host's lease ran out (not renewed in time)", token)
			default:
				out.Seat.ValidUntil = g.until.Round(0).UTC()
			}
			sv.mu.Unlock()
		}
	}
	return out, nil
}

// HoldsSeat reports whether this host holds a valid seat of product for
// consumer.
func (sv *Service) HoldsSeat(product, consumer string) bool {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	for _, g := range sv.grants {
		if g.seat.Product == product && slices.Contains(g.seat.Consumers, consumer) && time.Now().Before(g.until) {
			return true
		}
	}
	return false
}
