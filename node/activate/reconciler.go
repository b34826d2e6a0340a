package activate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	lcrypto "github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/node/expose"
	"github.com/p2pimg/p2pimg/node/gossip"
	"github.com/p2pimg/p2pimg/node/notify"
	"github.com/p2pimg/p2pimg/policy"
)

// Store is what the reconciler reads and writes.
type Store interface {
	chunk.ManifestGetter
	// GetLayer is the record of a name; chunk.ErrNotFound when absent.
	GetLayer(ctx context.Context, name chunk.Name) (chunk.Layer, error)
	// Records are the small records under a key prefix.
	Records(prefix string) (map[string][]byte, error)
	// PutRecord writes a small record durably.
	PutRecord(key string, v []byte) error
	// Put stores verified chunks (an access trace); idempotent.
	Put(ctx context.Context, blocks ...chunk.Block) error
	// HasMany reports, for each id in order, whether it is stored.
	HasMany(ctx context.Context, ids []cid.Cid) ([]bool, error)
}

// Fetcher makes a layer complete on this host.
type Fetcher interface {
	// Fetch makes layer name complete here as manifest mp.CID; it resumes
	// when retried.
	Fetch(ctx context.Context, name chunk.Name, mp gossip.Mapping, emit api.Emit) (*api.FetchResult, error)
	// Manifest is a manifest from the store, else fetched from a peer,
	// checked and stored.
	Manifest(ctx context.Context, id cid.Cid) (*chunk.Manifest, error)
	// FetchChunk returns chunk id of manifest layer, fetched at once from
	// a peer and verified (stored just after it returns); an error when
	// none supplied it before ctx ended.
	FetchChunk(ctx context.Context, layer, id cid.Cid) ([]byte, error)
	// Wait waits until the chunks FetchChunk returned so far are stored.
	Wait()
	// Behind is a context for a background fetch that yields to
	// FetchChunk's on-demand fetches while they wait.
	Behind(ctx context.Context) context.Context
}

// Seats claims and releases the seats of licensed layers.
type Seats interface {
	// Claim asks the keepers for a seat; a conflict error (api.CodeOf)
	// when none is free.
	Claim(ctx context.Context, req api.ClaimRequest) (*api.Grant, error)
	// Release gives a consumer's use of its seat back.
	Release(ctx context.Context, req api.ReleaseRequest) (*api.ReleaseResult, error)
	// HoldsSeat reports whether this host holds a valid seat of product
	// for consumer.
	HoldsSeat(product, consumer string) bool
}

// Policy is what the effective policies of this host say of a layer.
type Policy interface {
	// Effective is the layer's effective policy here, or the conflict
	// that refuses it; ok false when the cluster has no mapping for it.
	Effective(ctx context.Context, layer string) (policy.Effective, *policy.Conflict, bool)
	// Locked are the paths the policy locks (none on a conflict).
	Locked(ctx context.Context, layer string) []string
	// Restore undoes drift in an exposed view when the policy asks for
	// it; detail says what it found ("" when nothing).
	Restore(ctx context.Context, layer, cidStr string, x *expose.Exposure) (detail string, restored int, err error)
}

// Config configures the reconciler.
type Config struct {
	Host    host.Host
	Key     lcrypto.PrivKey // signs this host's own activations
	Cluster *cluster.Config
	Labels  map[string]string
	Root    string // activation paths are under it
	Catalog *gossip.Catalog
	Store   Store
	Fetcher Fetcher
	Seats   Seats
	Policy  Policy
	Exposer *expose.Exposer
	// Lazy makes fuse-mode activations active once the manifest is here:
	// chunks are fetched when first read, the rest in the background.
	Lazy bool
	// TraceWindow is how long after a lazy exposure the chunks read are
	// recorded as its access trace (default a minute).
	TraceWindow time.Duration
	Log         *slog.Logger
	// Reach is what this host knows of another's liveness (nil: all up).
	Reach func(p peer.ID, now time.Time) (api.Reach, time.Time)
	// Announce is poked when this host's states change; Reconcile wakes
	// the reconciler (an activation arrived or a policy changed).
	Announce, Reconcile *notify.Signal

	// AllowedPaths confine --at and --map sources (absolute, under Root);
	// none: anywhere under Root.
	AllowedPaths []string
}

// Reconciler brings this host's exposures in line with the activations
// that select it, and reports its states.
type Reconciler struct {
	cfg Config

	mu         sync.Mutex
	states     map[string]gossip.HostState // this host's, by layer
	background map[string]bool             // layers being fetched behind a lazy exposure
	traces     tracer

	local map[string]*record // the records, by layer: the reconciler goroutine's only
}

// New returns the reconciler; it starts nothing.
func New(cfg Config) *Reconciler {
	if cfg.TraceWindow <= 0 {
		cfg.TraceWindow = time.Minute
	}
	return &Reconciler{cfg: cfg, states: map[string]gossip.HostState{}, background: map[string]bool{},
		traces: tracer{recs: map[string]*recording{}, done: map[string]string{}}}
}

// States are this host's activation states, one per layer.
func (r *Reconciler) States() []gossip.HostState {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]gossip.HostState, 0, len(r.states))
	for _, st := range r.states {
		out = append(out, st)
	}
	return out
}

func (r *Reconciler) setState(st gossip.HostState) {
	r.mu.Lock()
	r.states[st.Layer] = st
	r.mu.Unlock()
}

func (r *Reconciler) stateOf(layer string) (gossip.HostState, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, ok := r.states[layer]
	return st, ok
}

// Run reconciles on every change and every second until ctx ends. It
// fails at once when the activation records cannot be read: a host that
// cannot tell what it exposed must not go on. Cancellation is not an
// error.
func (r *Reconciler) Run(ctx context.Context) error {
	local, err := r.loadRecords()
	if err != nil {
		return fmt.Errorf("reconciler: %w", err)
	}
	// The exposer's FUSE views live as long as this loop: dead ones a
	// killed daemon left are cleared first, and they are taken down
	// (overlays above them too) when it ends; the records stay, so the
	// next start mounts them again.
	r.cfg.Exposer.Recover()
	defer func() {
		if err := r.cfg.Exposer.Close(); err != nil {
			r.cfg.Log.Warn("reconciler: stop", "err", err)
		}
	}()
	for _, e := range local {
		st := e.hostState()
		if st.State == api.StateActive && e.Exposed && !r.cfg.Exposer.Live(&e.Exposure) {
			// a FUSE view died with the last run: not active until mounted again
			st.State, st.Detail = api.StateRequested, "exposing again after a restart"
		}
		r.setState(st)
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		r.reconcile(ctx, local)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-r.cfg.Reconcile.C():
		}
	}
}

// reconcile brings every layer's local exposure in line with the newest
// activation that selects this host. It runs on the reconciler goroutine only.
func (r *Reconciler) reconcile(ctx context.Context, local map[string]*record) {
	me := r.cfg.Host.ID()
	want := map[string]gossip.Activation{}
	for _, a := range r.cfg.Catalog.Activations() {
		if !a.Selects(me, r.cfg.Labels) || !r.signerStillAllowed(a) {
			continue
		}
		if cur, ok := want[a.Layer]; !ok || a.Newer(cur) {
			want[a.Layer] = a
		}
	}
	r.local = local
	for layer, a := range want {
		if ctx.Err() != nil {
			return
		}
		e := local[layer]
		if e == nil {
			e = &record{Layer: layer, State: api.StateInactive}
			local[layer] = e
		}
		switch a.Op {
		case api.OpDeactivate, api.OpDeactivateDiscard:
			r.deactivate(ctx, e, a)
		case api.OpActivate:
			r.activate(ctx, e, a)
		}
		r.mirrorCheck(ctx, e)
		r.noteChanges(e)
		r.noteTrace(e)
	}
	for layer, e := range local {
		if _, ok := want[layer]; !ok && ctx.Err() == nil {
			if e.State == api.StateDeactivating {
				// A deactivation the last run did not finish (killed
				// midway), whose request has not come back yet (a host
				// alone has none): finished from the record, keeping any
				// local writes it finds, whatever the request said.
				r.deactivate(ctx, e, gossip.Activation{Layer: layer, CID: e.CID, Time: e.Time, Op: api.OpDeactivate})
				continue
			}
			r.exposeAgain(ctx, e)
			r.noteChanges(e) // status shows local writes before the activation comes back too
		}
	}
}

// exposeAgain mounts again, from its record alone, an active exposure that
// died with the last run (a FUSE view), for a layer whose activation has
// not come back yet: activations live in the gossiped catalogue, and a
// host alone, or before its peers answer, has none.
//
// A failed record whose exposure was kept (a change refused because it
// would lose local writes) is mounted again too, and keeps its failure.
func (r *Reconciler) exposeAgain(ctx context.Context, e *record) {
	if !e.Exposed || r.cfg.Exposer.Live(&e.Exposure) {
		return
	}
	switch {
	case e.State == api.StateActive:
	case e.State == api.StateFailed && e.Kept && time.Since(e.Failed) >= retryAfter:
	default:
		return
	}
	shown := e.shown() // a refused version switch keeps the old one
	id, err := cid.Decode(shown)
	if err != nil {
		r.fail(e, fmt.Errorf("expose %s again: manifest id %q: %w", e.Layer, shown, err))
		return
	}
	m, err := r.cfg.Store.GetManifest(ctx, id)
	if err == nil {
		m, err = chunk.Flat(ctx, r.cfg.Store, m)
	}
	if err == nil {
		err = r.cfg.Exposer.Expose(ctx, &e.Exposure, e.Layer, shown, m, r.cfg.Policy.Locked(ctx, e.Layer))
	}
	if err == nil {
		err = r.cfg.Exposer.Remap(&e.Exposure)
	}
	if err != nil {
		r.fail(e, fmt.Errorf("expose %s again: %w", e.Layer, err))
		return
	}
	if e.State == api.StateFailed {
		r.report(e, api.StateFailed, e.Detail)
	} else {
		r.report(e, api.StateActive, "")
	}
	r.cfg.Log.Info("layer exposed again", "layer", e.Layer, "path", e.Path)
}

// report records a layer's new state durably and announces it.
func (r *Reconciler) report(e *record, state api.State, detail string) {
	e.State, e.Detail = state, detail
	if state != api.StateFailed {
		e.Kept = false
	}
	if state == api.StateFailed {
		e.Failed = time.Now()
	}
	if err := r.save(e); err != nil {
		r.cfg.Log.Warn("activation record", "layer", e.Layer, "err", err)
	}
	r.setState(e.hostState())
	r.cfg.Announce.Notify()
}

func (r *Reconciler) fail(e *record, err error) { r.report(e, api.StateFailed, err.Error()) }

// deactivate undoes what this host did for a layer.
func (r *Reconciler) deactivate(ctx context.Context, e *record, a gossip.Activation) {
	if e.Time == a.Time && e.State == api.StateInactive {
		return
	}
	if r.stillRefused(ctx, e, a) {
		return
	}
	if e.Time == a.Time && e.State == api.StateFailed && time.Since(e.Failed) < retryAfter {
		return
	}
	exposedNow := e.Exposed
	discard := a.Op == api.OpDeactivateDiscard
	if exposedNow && !discard {
		if n, size := r.cfg.Exposer.Changes(&e.Exposure, e.Layer); n > 0 {
			kept, keep := r.keeping(e)
			r.refuse(ctx, e, a, fmt.Sprintf("deactivation refused: %d path(s), %d bytes changed locally at %s (%s): %s, or deactivate with --discard-changes",
				n, size, e.Path, kept, keep))
			return
		}
		// Taking the view down detaches what is still in use; what a
		// process writes there afterwards would go with it.
		if w := expose.Writers(&e.Exposure, 3); len(w) > 0 && e.Path != "" {
			r.refuse(ctx, e, a, writersRefusal("deactivation", e, w))
			return
		}
	}
	e.Time, e.CID = a.Time, a.CID
	if exposedNow {
		r.report(e, api.StateDeactivating, "")
	}
	if err := r.cfg.Exposer.UnmapAll(&e.Exposure, func() error { return r.save(e) }); err != nil {
		r.fail(e, err)
		return
	}
	if exposedNow && e.Path != "" {
		if err := r.cfg.Exposer.Unexpose(&e.Exposure, e.Layer, discard); err != nil {
			if errors.Is(err, expose.ErrWrittenMeanwhile) {
				r.refuse(ctx, e, a, fmt.Sprintf("deactivation refused: %v, in %s and %s: commit them (p2pimg commit --activation %s NEW:TAG), or deactivate with --discard-changes",
					err, r.cfg.Exposer.UpperDir(e.Layer), r.cfg.Exposer.DeltaDir(e.Layer), e.Layer))
				return
			}
			r.fail(e, err)
			return
		}
	}
	r.releaseSeat(ctx, e)
	e.Path, e.At = "", ""
	if n, size, err := r.pruneViews(ctx, e.Layer); err != nil {
		r.cfg.Log.Warn("view checkouts", "err", err)
	} else if n > 0 {
		r.cfg.Log.Info("view checkouts removed", "count", n, "bytes", size)
	}
	r.report(e, api.StateInactive, "")
	r.cfg.Log.Info("layer deactivated", "layer", e.Layer)
}

// writersRefusal says why taking e down was refused while processes
// (writers) can still write into it.
func writersRefusal(what string, e *record, writers []string) string {
	return fmt.Sprintf("%s refused: %s is open for writing (%s): what they write after it is taken down would be lost; stop them and ask again, or deactivate with --discard-changes",
		what, e.Path, strings.Join(writers, "; "))
}

// refuse reports that activation a was refused because it would have lost
// local writes; the exposure stays in use (mounted again if it died), and
// a is not tried again: the operator asks again (a new activation) once
// the writes are committed, or with --discard-changes.
func (r *Reconciler) refuse(ctx context.Context, e *record, a gossip.Activation, detail string) {
	e.Time = a.Time
	r.keepExposed(ctx, e)
	r.report(e, api.StateFailed, detail)
}

// stillRefused reports whether a was refused already (refuse), keeping
// the exposure in use: a refusal stands until the operator asks again,
// so that a change refused for local writes does not go ahead by itself
// later, say once a commit made the writes count as kept, under a process
// still writing.
func (r *Reconciler) stillRefused(ctx context.Context, e *record, a gossip.Activation) bool {
	if e.Time != a.Time || e.State != api.StateFailed || !e.Kept {
		return false
	}
	if e.Exposed && !r.cfg.Exposer.Live(&e.Exposure) { // it died with the last run
		detail := e.Detail
		r.keepExposed(ctx, e)
		r.report(e, api.StateFailed, detail)
	}
	return true
}

// activate moves one layer toward what activation a asks of this host:
// policy first, then a seat for a licensed layer, then fetch, expose, map.
func (r *Reconciler) activate(ctx context.Context, e *record, a gossip.Activation) {
	path, perr := r.exposurePath(a)
	if e.Exposed && e.Path != path && resolveExisting(e.Path) == path {
		// Recorded before paths were resolved: the same place, not a move
		// (the mounts there show the resolved path).
		e.Path = path
	}
	lost := e.State == api.StateActive && e.Exposed && !r.cfg.Exposer.Live(&e.Exposure) // e.g. after a reboot or a restart
	if r.stillRefused(ctx, e, a) {
		return
	}
	product := r.layerProduct(ctx, a)
	seated := product == "" || r.cfg.Seats.HoldsSeat(product, seatConsumer(a.Layer))
	if e.Time == a.Time && !lost && seated && (e.State == api.StateActive || (e.State == api.StateFailed && time.Since(e.Failed) < retryAfter)) {
		return
	}
	if r.refusedByPolicy(ctx, e, a) {
		return
	}
	err := r.pathsAllowed(a)
	if err == nil {
		err = perr
	}
	if err == nil {
		err = r.pathFree(a, path)
	}
	if err != nil {
		if e.State != api.StateFailed || e.Time != a.Time || e.Detail != err.Error() {
			e.Time, e.CID = a.Time, a.CID
			r.report(e, api.StateFailed, err.Error())
		}
		return
	}
	if !seated {
		// A licensed layer: a seat first, before anything is exposed.
		// (After a daemon restart the seat is claimed again; the layer
		// stays exposed meanwhile.)
		if !r.claimSeat(ctx, e, a, product) {
			return
		}
		if e.Time == a.Time && e.CID == a.CID && e.Exposed && e.Path == path && !lost && e.State == api.StateActive {
			r.report(e, api.StateActive, "")
			return
		}
	}
	if r.wouldLoseChanges(ctx, e, a, path) {
		return
	}
	mode := r.cfg.Exposer.Mode()
	if e.Exposed && !lost && e.Path == path && (e.Mode == "" || e.Mode == mode) && e.shown() == a.CID {
		if n, _ := r.cfg.Exposer.Changes(&e.Exposure, e.Layer); n > 0 || r.cfg.Exposer.UpperWritten(e.Layer) {
			// The version already in use, written into (committed or
			// not): mounting it again would drop the overlay's upper
			// directory; only the record and the maps change.
			r.remapOnly(e, a)
			return
		}
	}
	if err := r.cfg.Exposer.UnmapAll(&e.Exposure, func() error { return r.save(e) }); err != nil { // maps are made again for this activation
		r.fail(e, err)
		return
	}
	if e.Exposed && e.Path != "" && (e.Path != path || (e.Mode != "" && e.Mode != mode)) {
		// moved, or exposed another way: undo the old exposure first
		if err := r.cfg.Exposer.Unexpose(&e.Exposure, e.Layer, false); err != nil {
			if errors.Is(err, expose.ErrWrittenMeanwhile) {
				r.refuse(ctx, e, a, fmt.Sprintf("activation refused: %v, in %s and %s: keep them with p2pimg commit --activation %s NEW:TAG, or deactivate with --discard-changes first",
					err, r.cfg.Exposer.UpperDir(e.Layer), r.cfg.Exposer.DeltaDir(e.Layer), e.Layer))
				return
			}
			r.fail(e, err)
			return
		}
	}
	e.Time, e.CID, e.At, e.Path, e.Mode = a.Time, a.CID, a.At, path, mode
	r.report(e, api.StateFetching, "")
	behind, err := r.bringUp(ctx, e, a)
	if err != nil {
		if ctx.Err() == nil {
			r.fail(e, err)
			r.cfg.Log.Warn("activation failed", "layer", e.Layer, "err", err)
		}
		return
	}
	r.report(e, api.StateActive, "")
	r.cfg.Log.Info("layer activated", "layer", e.Layer, "path", path)
	if behind != nil { // lazy: only now, so that they do not delay it
		r.startTrace(e.Layer, e.CID, behind)
		r.fetchBehind(ctx, a, behind)
	}
}

// wouldLoseChanges refuses (and reports) an activation that would throw
// away what was written into the layer's exposure and not committed:
// moving it to another path or exposing it another way takes the overlay's
// upper directory and the disk deltas with the old exposure, and another
// version of the layer at the same path drops the upper directory and
// shows its disk images without the old version's writes. The changes
// stay where they are, in use, until they are committed or the layer is
// deactivated with --discard-changes. (Writes made while a new version is
// fetched are looked for again just before it is exposed: exposeVersion.)
func (r *Reconciler) wouldLoseChanges(ctx context.Context, e *record, a gossip.Activation, path string) bool {
	if !e.Exposed || e.Path == "" {
		return false
	}
	var why string
	switch {
	case e.Path != path:
		why = "moving it to " + path + " would lose them"
	case e.Mode != "" && e.Mode != r.cfg.Exposer.Mode():
		why = fmt.Sprintf("exposing it %s instead of %s would lose them", r.cfg.Exposer.Mode(), e.Mode)
	case e.shown() != a.CID:
		why = "version " + a.CID + " would not show them"
	default:
		return false
	}
	n, size := r.cfg.Exposer.Changes(&e.Exposure, e.Layer)
	if n > 0 {
		r.refuse(ctx, e, a, r.refusal(e, n, size, why))
		return true
	}
	if w := expose.Writers(&e.Exposure, 3); len(w) > 0 {
		r.refuse(ctx, e, a, writersRefusal("activation", e, w))
		return true
	}
	return false
}

// refusal says why an activation was refused and what to do.
func (r *Reconciler) refusal(e *record, n int, size int64, why string) string {
	kept, keep := r.keeping(e)
	return fmt.Sprintf("activation refused: %d path(s), %d bytes changed locally at %s (%s); %s: %s, or deactivate with --discard-changes first",
		n, size, e.Path, kept, why, keep)
}

// keeping says where e's local changes are kept and how to keep them: a
// commit for overlaid exposures; a materialised view holds them itself,
// and commit cannot read them from it.
func (r *Reconciler) keeping(e *record) (kept, keep string) {
	if !e.Mode.Overlaid() {
		return "in the view itself", "copy out what you need"
	}
	return fmt.Sprintf("kept in %s and %s", r.cfg.Exposer.UpperDir(e.Layer), r.cfg.Exposer.DeltaDir(e.Layer)),
		fmt.Sprintf("commit them (p2pimg commit --activation %s NEW:TAG)", e.Layer)
}

// remapOnly answers an activation of the version already in use at the
// same place: its maps are made again and the record takes its time.
func (r *Reconciler) remapOnly(e *record, a gossip.Activation) {
	if err := r.cfg.Exposer.UnmapAll(&e.Exposure, func() error { return r.save(e) }); err != nil {
		r.fail(e, err)
		return
	}
	e.Time, e.CID, e.At = a.Time, a.CID, a.At
	if err := r.mapAll(e, a); err != nil {
		r.fail(e, err)
		return
	}
	r.report(e, api.StateActive, "")
}

// keepExposed mounts again, where it was, the exposure a refused change
// leaves in place, when it died with the last run (a FUSE view after a
// restart): the refusal keeps the old version in use, so it stays usable.
func (r *Reconciler) keepExposed(ctx context.Context, e *record) {
	if e.Exposed && !r.cfg.Exposer.Live(&e.Exposure) {
		e.State = api.StateActive // whatever it was: the exposure is what stays
		r.exposeAgain(ctx, e)
	}
	e.Kept = true // the caller reports the refusal
}

const mirrorEvery = 2 * time.Second

// changedLocally is the detail an active layer with local writes shows.
const changedLocally = "changed locally"

// noteChanges shows in an active layer's state whether its view was
// changed locally (every mirrorEvery at most). It runs on the reconciler
// goroutine.
func (r *Reconciler) noteChanges(e *record) {
	if e.State != api.StateActive || !e.Exposed || !e.Mode.Overlaid() || time.Since(e.noted) < mirrorEvery {
		return
	}
	e.noted = time.Now()
	detail := ""
	if n, size := r.cfg.Exposer.Changes(&e.Exposure, e.Layer); n > 0 {
		detail = fmt.Sprintf("%s: %d path(s), %d bytes", changedLocally, n, size)
	}
	if detail == e.Detail || (detail == "" && !strings.HasPrefix(e.Detail, changedLocally)) {
		return
	}
	e.Detail = detail
	r.setState(e.hostState())
	r.cfg.Announce.Notify()
}

// lazyManifest is the activation's flattened manifest, fetched alone: no
// chunk is needed to expose it through FUSE.
func (r *Reconciler) lazyManifest(ctx context.Context, a gossip.Activation) (*chunk.Manifest, error) {
	id, err := cid.Decode(a.CID)
	if err != nil {
		return nil, err
	}
	m, err := r.cfg.Fetcher.Manifest(ctx, id)
	if err != nil {
		return nil, err
	}
	return chunk.Flat(ctx, r.cfg.Store, m) // fails while a parent is missing: then fetch first
}

// fetchBehind fetches the rest of a lazily exposed layer in the
// background, under the usual scheduler and caps, showing its progress
// in the layer's state; reads meanwhile fetch what they need at once.
func (r *Reconciler) fetchBehind(ctx context.Context, a gossip.Activation, m *chunk.Manifest) {
	r.mu.Lock()
	running := r.background[a.Layer]
	r.background[a.Layer] = true
	r.mu.Unlock()
	if running {
		return
	}
	detail := func(d string) {
		r.mu.Lock()
		if st, ok := r.states[a.Layer]; ok && st.State == api.StateActive && st.CID == a.CID {
			st.Detail = d
			r.states[a.Layer] = st
		}
		r.mu.Unlock()
		r.cfg.Announce.Notify()
	}
	go func() {
		defer func() {
			r.mu.Lock()
			delete(r.background, a.Layer)
			r.mu.Unlock()
		}()
		r.prefetchTraced(ctx, a, m)
		bctx, cancel := context.WithCancel(ctx)
		defer cancel()
		_, err := r.ensureLayer(r.cfg.Fetcher.Behind(bctx), a, func(ev api.Event) {
			if p := ev.Progress; p != nil {
				detail(fmt.Sprintf("lazy: %d of %d bytes here, from %d peer(s)", p.Done, p.Total, p.Peers))
			}
		})
		switch {
		case ctx.Err() != nil:
		case err != nil:
			r.cfg.Log.Warn("lazy activation: background fetch", "layer", a.Layer, "err", err)
			detail("lazy: background fetch failed (reads still fetch what they need): " + err.Error())
		default:
			detail("")
		}
	}()
}

// NoteReadError shows in the states of the layers exposed as manifest
// cidStr that a read through the view failed, with the chunk and why.
func (r *Reconciler) NoteReadError(cidStr string, id cid.Cid, err error) {
	r.mu.Lock()
	for l, st := range r.states {
		if st.CID == cidStr && st.State == api.StateActive {
			st.Detail = fmt.Sprintf("read failed (EIO): chunk %s: %v", id, err)
			r.states[l] = st
		}
	}
	r.mu.Unlock()
	r.cfg.Announce.Notify()
}

// signerStillAllowed reports whether a's signer may still act on this
// host: an operator of the cluster as it is now, or this host itself. An
// activation is checked when it arrives; an operator removed since (a
// `cluster reload` after a key was lost) must not go on being obeyed.
// What it already exposed stays: tearing down running guests is not for a
// revocation to decide.
func (r *Reconciler) signerStillAllowed(a gossip.Activation) bool {
	if a.Signer == r.cfg.Host.ID().String() {
		return true
	}
	id, err := peer.Decode(a.Signer)
	return err == nil && (a.Hosts == a.Signer || r.cfg.Cluster != nil && r.cfg.Cluster.IsOperator(id))
}
