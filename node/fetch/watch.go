package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/xchg"
)

// Have-notes: every host fetching a layer tells the peers that watch it of
// each chunk it stores and of each first copy it asks a seed for, as it
// happens (xchg.HaveProto). A peer's workers then ask it for a chunk as
// soon as it is there, and no two hosts ask a seed for the same first copy.

// WatchHave sends the have-bitmap of layer id, then a note for every
// change while this host fetches it, now or later, until it holds every
// chunk (xchg.Watcher).
func (fr *Fetcher) WatchHave(ctx context.Context, id cid.Cid, bitmap func([]byte) error, notes func([]xchg.Note) error) error {
	f, started := fr.fetchOf(id)
	var known []bool // what the watcher has been told this host holds
	if f != nil {
		f.mu.Lock()
		known = slices.Clone(f.have)
		f.mu.Unlock()
	} else {
		var err error
		if known, err = fr.holds(ctx, id); err != nil {
			return err
		}
	}
	if err := bitmap(xchg.PackBits(known)); err != nil {
		return err
	}
	for slices.Contains(known, false) {
		if f == nil {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-started:
			}
		} else if err := f.tell(ctx, known, notes); err != nil {
			return err
		}
		f, started = fr.fetchOf(id)
	}
	return nil
}

// fetchOf is the fetch of layer id running now (nil if none), and a
// channel closed when the next one starts.
func (fr *Fetcher) fetchOf(id cid.Cid) (*fetch, <-chan struct{}) {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	return fr.fetches[id], fr.started
}

// tell sends a watcher the notes of f, from what it knows, until f ends.
func (f *fetch) tell(ctx context.Context, known []bool, notes func([]xchg.Note) error) error {
	ns := []xchg.Note{{Index: 1, Kind: xchg.NoteState}}
	f.mu.Lock()
	for i, h := range f.have {
		if h && !known[i] {
			ns = append(ns, xchg.Note{Index: i, Kind: xchg.NoteHave})
		}
		if f.mine[i] {
			ns = append(ns, xchg.Note{Index: i, Kind: xchg.NoteAsked})
		}
	}
	id := f.notes.join()
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.notes.leave(id)
		f.mu.Unlock()
	}()
	for {
		for _, n := range ns {
			if n.Kind == xchg.NoteHave {
				known[n.Index] = true
			}
		}
		if err := notes(ns); err != nil {
			return err
		}
		f.mu.Lock()
		ended, changed := f.ended, f.changed
		ns = f.notes.read(id)
		f.mu.Unlock()
		if ended {
			for _, n := range ns {
				if n.Kind == xchg.NoteHave {
					known[n.Index] = true
				}
			}
			return notes(append(ns, xchg.Note{Index: 0, Kind: xchg.NoteState}))
		}
		if len(ns) == 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-changed:
			}
			f.mu.Lock()
			ns = f.notes.read(id)
			f.mu.Unlock()
		}
	}
}

// watch keeps f's view of peer p current until ctx ends or p fails: from
// its have-notes, or by asking for its bitmap now and then when p does not
// send notes.
func (fr *Fetcher) watch(ctx context.Context, f *fetch, p peer.ID) error {
	defer f.unview(p)
	n := len(f.refs)
	// A peer without the manifest may be about to fetch the layer too (all
	// hosts told at once): look again soon, then less often.
	again := 20 * time.Millisecond
	for {
		hw, has, err := xchg.WatchHave(ctx, fr.cfg.Host, p, f.id, n, readTimeout)
		switch {
		case errors.Is(err, xchg.ErrNoWatch):
			return fr.poll(ctx, f, p)
		case errors.Is(err, xchg.ErrMissing):
			f.view(p, make([]bool, n))
			f.lacksManifest(p)
		case err != nil:
			return fmt.Errorf("peer %s: have-notes: %w", p, err)
		default:
			f.view(p, has)
			if err := f.follow(ctx, p, hw); err != nil {
				return fmt.Errorf("peer %s: have-notes: %w", p, err)
			}
		}
		if err := f.rest(ctx, p, again); err != nil {
			return err
		}
		again = min(2*again, respawnEvery)
	}
}

// follow applies p's notes until it ends the watch (nil) or fails.
func (f *fetch) follow(ctx context.Context, p peer.ID, hw *xchg.HaveWatch) error {
	defer context.AfterFunc(ctx, hw.Reset)()
	defer hw.Close()
	for {
		ns, err := hw.Next()
		if errors.Is(err, io.EOF) {
			f.noted(p, []xchg.Note{{Index: 0, Kind: xchg.NoteState}})
			return nil
		}
		if err != nil {
			return err
		}
		f.noted(p, ns)
	}
}

// poll asks a peer without have-notes for its bitmap now and then.
func (fr *Fetcher) poll(ctx context.Context, f *fetch, p peer.ID) error {
	c, err := xchg.Dial(ctx, fr.cfg.Host, p)
	if err != nil {
		return fmt.Errorf("peer %s: %w", p, err)
	}
	defer c.Close()
	defer context.AfterFunc(ctx, c.Reset)()
	n := len(f.refs)
	for {
		bm, err := c.Ask(xchg.ReqHave, f.id, (n+7)/8, readTimeout)
		has := make([]bool, n)
		switch {
		case err == nil:
			if has, err = xchg.UnpackBits(bm, n); err != nil {
				return fmt.Errorf("peer %s: have: %w", p, err)
			}
		case !errors.Is(err, chunk.ErrNotFound):
			return fmt.Errorf("peer %s: have: %w", p, err)
		}
		f.view(p, has)
		if err := f.rest(ctx, p, 300*time.Millisecond); err != nil {
			return err
		}
	}
}

// rest waits d before the next look at peer p; until ctx ends once p
// holds every chunk (nothing more to learn).
func (f *fetch) rest(ctx context.Context, p peer.ID, d time.Duration) error {
	var again <-chan time.Time
	if !f.complete(p) {
		again = time.After(d)
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-again:
		return nil
	}
}

// view replaces what f knows peer p holds with has.
func (f *fetch) view(p peer.ID, has []bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.drop(p)
	v := &view{has: has, hasBits: newBitset(has), asked: make([]bool, len(has))}
	for i, h := range has {
		if h {
			v.held++
			f.avail[i]++
		}
	}
	f.views[p] = v
	if v.complete = v.held == len(has); v.complete {
		f.completes++
	}
	f.reshare()
	f.signal()
}

// reshare sets this host's share of the first copies: its rank among the
// hosts that send notes and are not complete.
func (f *fetch) reshare() {
	ids := []peer.ID{f.self}
	for p, v := range f.views {
		if v.fetching && !v.complete {
			ids = append(ids, p)
		}
	}
	slices.Sort(ids)
	f.rank, f.parts = slices.Index(ids, f.self), len(ids)
}

// lacksManifest records that peer p does not have the layer's manifest.
func (f *fetch) lacksManifest(p peer.ID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if v := f.views[p]; v != nil {
		v.missing = true
	}
}

// unview forgets what peer p holds.
func (f *fetch) unview(p peer.ID) {
	f.mu.Lock()
	f.drop(p)
	f.signal()
	f.mu.Unlock()
}

func (f *fetch) drop(p peer.ID) {
	v := f.views[p]
	if v == nil {
		return
	}
	for i := range v.has {
		if v.has[i] {
			f.avail[i]--
		}
		if v.asked[i] {
			f.asked[i]--
		}
	}
	if v.complete {
		f.completes--
	}
	delete(f.views, p)
	f.reshare()
}

// noted applies notes from peer p.
func (f *fetch) noted(p peer.ID, ns []xchg.Note) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := f.views[p]
	if v == nil {
		return
	}
	for _, nt := range ns {
		i := nt.Index
		switch nt.Kind {
		case xchg.NoteHave:
			if !v.has[i] {
				v.has[i] = true
				v.hasBits.set(i)
				v.held++
				f.avail[i]++
			}
			f.unask(v, i)
		case xchg.NoteDropped:
			f.unask(v, i)
		case xchg.NoteAsked:
			if !v.asked[i] && !v.has[i] {
				v.asked[i] = true
				f.asked[i]++
			}
		case xchg.NoteState:
			// Stopped: what it had asked for is no longer coming.
			for k := range v.asked {
				f.unask(v, k)
			}
			v.fetching = i == 1
			f.reshare()
		}
	}
	if !v.complete && v.held == len(v.has) {
		v.complete = true
		f.completes++
		f.reshare()
	}
	f.signal()
}

func (f *fetch) unask(v *view, i int) {
	if v.asked[i] {
		v.asked[i] = false
		f.asked[i]--
	}
}

// lacks records that peer p answered it does not have chunk i after all.
func (f *fetch) lacks(p peer.ID, i int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := f.views[p]
	if v == nil || !v.has[i] {
		return
	}
	v.has[i] = false
	v.hasBits.clear(i)
	v.held--
	f.avail[i]--
	if v.complete {
		v.complete = false
		f.completes--
	}
}

// complete says whether peer p is known to hold every chunk.
func (f *fetch) complete(p peer.ID) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := f.views[p]
	return v != nil && v.complete
}
