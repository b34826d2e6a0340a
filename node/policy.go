package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/tree"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/policy"
)

// Policies: a layer's policy travels in its signed mapping (set by whoever
// may publish it); a host's policy is set on the host, kept in its store
// and gossiped in its snapshot, so any host can resolve any pair. The
// policy syncer fetches what the effective policy says to hold; the
// activation reconciler refuses what it forbids and undoes drift in mirror
// mode.

const hostPolicyKey = "policy/host"

// hostPolicies is this host's policy and the conflicts it last found.
type hostPolicies struct {
	mu        sync.Mutex
	host      policy.Host
	raw       json.RawMessage // canonical JSON of host, gossiped
	conflicts map[string]*policy.Conflict
	kick      chan struct{}
	failed    map[string]time.Time // held layers whose fetch failed, when (tried again after policyRetry)
}

// policyRetry is how long the syncer leaves a held layer whose fetch
// failed (no peer had it, say) before it tries again.
const policyRetry = 30 * time.Second

func newHostPolicies() *hostPolicies {
	return &hostPolicies{conflicts: map[string]*policy.Conflict{}, kick: make(chan struct{}, 1), failed: map[string]time.Time{}}
}

// layerPolicy decodes the policy of a mapping; only the canonical form is
// accepted, so one policy has one signed encoding.
func layerPolicy(raw json.RawMessage) (policy.Layer, error) {
	if len(raw) == 0 {
		return policy.Layer{}, nil
	}
	l, err := policy.DecodeLayer(raw)
	if err != nil {
		return l, err
	}
	if again, _ := json.Marshal(l); !bytes.Equal(again, raw) {
		return l, errors.New("layer policy: not in canonical form")
	}
	return l, nil
}

// loadHostPolicy takes the policy file given at start (if any), else the
// one stored by `policy set-host`.
func (n *Node) loadHostPolicy(text string) error {
	if text != "" {
		_, err := n.setHostPolicy(text)
		return err
	}
	recs, err := n.db.Records(hostPolicyKey)
	if err != nil {
		return err
	}
	if b, ok := recs[hostPolicyKey]; ok {
		h, err := policy.DecodeHost(b)
		if err != nil {
			return fmt.Errorf("stored host policy: %w", err)
		}
		n.policies.mu.Lock()
		n.policies.host, n.policies.raw = h, b
		n.policies.mu.Unlock()
	}
	return nil
}

func (n *Node) setHostPolicy(text string) (policy.Host, error) {
	h, err := policy.ParseHost([]byte(text))
	if err != nil {
		return h, badRequest(err)
	}
	raw, _ := json.Marshal(h)
	if err := n.db.PutRecord(hostPolicyKey, raw); err != nil {
		return h, err
	}
	n.policies.mu.Lock()
	n.policies.host, n.policies.raw = h, raw
	n.policies.mu.Unlock()
	return h, nil
}

// SetHostPolicy replaces this host's policy (TOML text) and applies it.
func (n *Node) SetHostPolicy(ctx context.Context, text string) (*policy.Host, error) {
	h, err := n.setHostPolicy(text)
	if err != nil {
		return nil, err
	}
	n.log.Info("host policy set")
	n.announceSoon()
	n.policySoon()
	n.reconcileSoon()
	return &h, nil
}

// SetLayerPolicy publishes NAME:TAG again, same content, with a new layer
// policy (TOML text). Only a host that may publish can.
func (n *Node) SetLayerPolicy(ctx context.Context, name, text string) (*api.ClusterLayer, error) {
	nm, err := chunk.ParseName(name)
	if err != nil {
		return nil, badRequest(err)
	}
	l, err := policy.ParseLayer([]byte(text))
	if err != nil {
		return nil, badRequest(err)
	}
	if !n.cfg.Cluster.MayPublish(n.host.ID()) {
		return nil, badRequestf("policy set-layer %s: this host may not publish layers in this cluster (publishers = [...])", nm)
	}
	mp, ok := n.catalog.lookup(nm.String())
	if !ok {
		return nil, &codedError{api.CodeNotFound, fmt.Errorf("policy set-layer: no layer %s in the cluster catalogue", nm)}
	}
	raw, _ := json.Marshal(l)
	mp.Policy, mp.Published, mp.Sig = raw, max(time.Now().UnixNano(), mp.Published+1), nil
	if l.Product != "" {
		mp.Product = l.Product
	}
	if mp, err = signMapping(n.key, mp); err != nil {
		return nil, err
	}
	n.catalog.merge(mp)
	if rec, err := n.db.GetLayer(ctx, nm); err == nil && rec.CID == mp.CID {
		rec.Publisher, rec.Published, rec.Signature, rec.Product, rec.Policy = mp.Publisher, mp.Published, mp.Sig, mp.Product, mp.Policy
		if err := n.db.PutLayer(ctx, rec); err != nil {
			return nil, err
		}
	}
	n.announceSoon()
	n.policySoon()
	n.log.Info("layer policy set", "layer", nm.String())
	return &api.ClusterLayer{Name: mp.Name, CID: mp.CID, Size: mp.Size, Publisher: mp.Publisher, Product: mp.Product}, nil
}

func (n *Node) policySoon() {
	select {
	case n.policies.kick <- struct{}{}:
	default:
	}
}

// hostFacts is what resolution needs to know about a host.
type hostFacts struct {
	labels map[string]string
	policy policy.Host
	held   map[string]bool // manifest CIDs held complete
}

// facts gathers every known host: this one and those heard from.
func (n *Node) facts() map[peer.ID]hostFacts {
	out := map[peer.ID]hostFacts{}
	for p, v := range n.catalog.hosts() {
		out[p] = hostFacts{labels: v.labels, policy: v.policy, held: map[string]bool{}}
	}
	n.policies.mu.Lock()
	out[n.host.ID()] = hostFacts{labels: n.cfg.Labels, policy: n.policies.host, held: map[string]bool{}}
	n.policies.mu.Unlock()
	for _, mp := range n.catalog.all() {
		for p, complete := range n.catalog.holdings(mp.CID) {
			if f, ok := out[p]; ok && complete {
				f.held[mp.CID] = true
			}
		}
	}
	if ls, err := n.db.Layers(context.Background()); err == nil {
		for _, l := range ls {
			if l.State == chunk.Complete {
				out[n.host.ID()].held[l.CID] = true
			}
		}
	}
	return out
}

// resolve is the effective policy of mapping mp on host id.
func resolve(id peer.ID, f hostFacts, mp Mapping, all []Mapping) (policy.Effective, *policy.Conflict) {
	lp, _ := layerPolicy(mp.Policy)
	if lp.Product == "" {
		lp.Product = mp.Product
	}
	var held int64
	for _, o := range all {
		if o.CID != mp.CID && f.held[o.CID] {
			held += o.Size
		}
	}
	return policy.Resolve(policy.Subject{Layer: mp.Name, Size: mp.Size, Host: id.String(), Labels: f.labels, Held: held}, lp, f.policy)
}

// effective is the effective policy of a layer on this host (ok false:
// the cluster has no mapping for it).
func (n *Node) effective(layer string) (policy.Effective, *policy.Conflict, bool) {
	mp, ok := n.catalog.lookup(layer)
	if !ok {
		return policy.Effective{}, nil, false
	}
	me := n.host.ID()
	e, c := resolve(me, n.facts()[me], mp, n.catalog.all())
	return e, c, true
}

// PolicyShow is the effective policy of a layer on a host (this one when
// host is empty), or the conflict.
func (n *Node) PolicyShow(ctx context.Context, name, host string) (*api.PolicyResult, error) {
	nm, err := chunk.ParseName(name)
	if err != nil {
		return nil, badRequest(err)
	}
	mp, ok := n.catalog.lookup(nm.String())
	if !ok {
		return nil, &codedError{api.CodeNotFound, fmt.Errorf("no layer %s in the cluster catalogue", nm)}
	}
	id := n.host.ID()
	if host != "" {
		if id, err = peer.Decode(host); err != nil {
			return nil, badRequestf("--host %q: %v", host, err)
		}
	}
	f, ok := n.facts()[id]
	if !ok {
		return nil, &codedError{api.CodeNotFound, fmt.Errorf("host %s: not heard from", host)}
	}
	lp, _ := layerPolicy(mp.Policy)
	e, c := resolve(id, f, mp, n.catalog.all())
	r := &api.PolicyResult{Layer: mp.Name, Host: id.String(), LayerPolicy: lp, HostPolicy: f.policy, Conflict: c}
	if c == nil {
		r.Effective = &e
	}
	return r, nil
}

// PolicyCheck lists every host and layer pair that conflicts.
func (n *Node) PolicyCheck(ctx context.Context) []api.PolicyResult {
	all := n.catalog.all()
	out := []api.PolicyResult{}
	for id, f := range n.facts() {
		for _, mp := range all {
			if _, c := resolve(id, f, mp, all); c != nil {
				out = append(out, api.PolicyResult{Layer: mp.Name, Host: id.String(), Conflict: c})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Layer != out[j].Layer {
			return out[i].Layer < out[j].Layer
		}
		return out[i].Host < out[j].Host
	})
	return out
}

// inWindow reports whether background sync may run now.
func inWindow(ws []policy.Window, now time.Time) bool {
	return policy.Allows(ws, now.UTC().Hour()*60+now.UTC().Minute())
}

// policySyncer fetches every layer the effective policy says this host
// holds, on every change and every few seconds, and records conflicts.
func (n *Node) policySyncer(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		n.syncPolicies(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-n.policies.kick:
		}
	}
}

func (n *Node) syncPolicies(ctx context.Context) {
	me := n.host.ID()
	all := n.catalog.all()
	f := n.facts()[me]
	conflicts := map[string]*policy.Conflict{}
	for _, mp := range all {
		e, c := resolve(me, f, mp, all)
		if c != nil {
			conflicts[mp.Name] = c
			continue
		}
		if !e.Hold || f.held[mp.CID] || !inWindow(e.Windows, time.Now()) || ctx.Err() != nil {
			continue
		}
		name, _ := chunk.ParseName(mp.Name)
		if l, err := n.db.GetLayer(ctx, name); err == nil && l.CID == mp.CID && l.State == chunk.Complete {
			continue
		}
		key := mp.Name + "@" + mp.CID
		n.policies.mu.Lock()
		last, failedBefore := n.policies.failed[key]
		n.policies.mu.Unlock()
		if failedBefore && time.Since(last) < policyRetry {
			continue
		}
		n.log.Info("policy: fetching a layer this host holds", "layer", mp.Name)
		_, err := n.fetchMapping(withCap(ctx, e.Bandwidth), name, mp, func(api.Event) {})
		n.policies.mu.Lock()
		if err != nil && ctx.Err() == nil {
			n.policies.failed[key] = time.Now()
			n.log.Warn("policy: fetch of a held layer failed; trying again later", "layer", mp.Name, "retry_in", policyRetry, "err", err)
		} else {
			delete(n.policies.failed, key)
		}
		n.policies.mu.Unlock()
	}
	n.policies.mu.Lock()
	changed := len(conflicts) != len(n.policies.conflicts)
	for k, c := range conflicts {
		if o := n.policies.conflicts[k]; o == nil || *o != *c {
			changed = true
			n.log.Warn("policy conflict: this host does not sync the layer", "layer", k, "layer_rule", c.LayerRule, "host_rule", c.HostRule)
		}
	}
	n.policies.conflicts = conflicts
	n.policies.mu.Unlock()
	if changed {
		n.announceSoon()
	}
}

// keeps reports why this host must not drop a layer: its policy holds it
// here, or the cluster would fall below the layer's minimum copies.
func (n *Node) keeps(name string, id string) error {
	mp, ok := n.catalog.lookup(name)
	if !ok || mp.CID != id {
		return nil
	}
	lp, _ := layerPolicy(mp.Policy)
	if e, c, _ := n.effective(name); c == nil && e.Hold {
		return fmt.Errorf("layer %s: its policy holds it on this host (hold=%s); change the layer or host policy first", name, lp.Hold)
	}
	if lp.MinCopies > 0 {
		copies := 0
		for p, complete := range n.catalog.holdings(mp.CID) {
			if complete && p != n.host.ID() {
				copies++
			}
		}
		if name, err := chunk.ParseName(name); err == nil {
			if l, err := n.db.GetLayer(context.Background(), name); err == nil && l.CID == mp.CID && l.State == chunk.Complete {
				copies++ // this host's own copy
			}
		}
		if copies <= lp.MinCopies {
			return fmt.Errorf("layer %s: the cluster holds %d complete copies and its policy wants at least %d (min_copies)", name, copies, lp.MinCopies)
		}
	}
	return nil
}

// mirrorCheck undoes drift in an exposed view of a mirror-mode layer: it
// compares the view with the manifest and, when they differ, swaps a fresh
// copy in. It runs on the reconciler goroutine.
func (n *Node) mirrorCheck(ctx context.Context, e *exposed) {
	if e.State != StateActive || !e.Exposed || time.Since(e.checked) < mirrorEvery {
		return
	}
	eff, c, ok := n.effective(e.Layer)
	if !ok || c != nil || (eff.Mode != policy.Mirror && len(eff.Locked) == 0) {
		return
	}
	e.checked = time.Now()
	id, err := cid.Decode(e.CID)
	if err != nil {
		return
	}
	m, err := n.db.GetManifest(ctx, id)
	if err == nil {
		m, err = n.flat(ctx, m)
	}
	if err != nil {
		return
	}
	// What differs, and how to put it back: an overlay is mounted again
	// without its upper directory; a materialized view gets a fresh copy
	// (mirror) or just its locked paths back.
	var changes []tree.Change
	what, restore := "the exposed view drifted", func() error { return n.expose(ctx, e, m) }
	switch {
	case e.Mode == ModeOverlay && eff.Mode != policy.Mirror:
		return // locked paths are read-only binds there
	case e.Mode == ModeOverlay:
		changes, err = tree.UpperChanges(m, n.upperDir(e.Layer))
	default:
		changes, err = tree.Diff(ctx, m, e.Path)
		if eff.Mode != policy.Mirror {
			changes = slices.DeleteFunc(changes, func(ch tree.Change) bool { return !isLocked("/"+ch.Path, eff.Locked) })
			what, restore = "locked paths were changed", func() error { return n.restorePaths(ctx, e.Path, m, changes) }
		}
	}
	if err != nil || len(changes) == 0 {
		return
	}
	var paths []string
	for _, ch := range changes {
		paths = append(paths, ch.Path)
	}
	n.log.Warn("policy: "+what+"; restoring the layer", "layer", e.Layer, "paths", paths)
	e.Detail = fmt.Sprintf("%s: %s; restored at %s", what, strings.Join(paths, ", "), time.Now().UTC().Format(time.TimeOnly))
	if err := restore(); err != nil {
		n.log.Warn("policy: restore failed", "layer", e.Layer, "err", err)
		return
	}
	if err := n.saveExposed(e); err != nil {
		n.log.Warn("activation record", "layer", e.Layer, "err", err)
	}
	e.Restored += len(changes)
	n.setStates(e.HostState)
}

const mirrorEvery = 2 * time.Second

// restorePaths puts back the changed paths of a materialized view, one by
// one: the layer's versions are checked out beside the view and renamed
// over the changed ones; paths the layer does not have are removed.
func (n *Node) restorePaths(ctx context.Context, dir string, m *chunk.Manifest, changes []tree.Change) error {
	want := map[string]bool{}
	for _, ch := range changes {
		want[ch.Path] = true
		for d := path.Dir(ch.Path); d != "."; d = path.Dir(d) {
			want[d] = true
		}
	}
	sub := &chunk.Manifest{Params: m.Params}
	for _, e := range m.Entries {
		if want[e.Path] {
			sub.Entries = append(sub.Entries, e)
		}
	}
	tmp := dir + ".p2pimg-fix"
	os.RemoveAll(tmp)
	defer os.RemoveAll(tmp)
	if err := tree.Checkout(ctx, n.db, sub, tmp, tree.CheckoutOptions{Owners: os.Geteuid() == 0}); err != nil {
		return err
	}
	for _, ch := range changes {
		dst := filepath.Join(dir, filepath.FromSlash(ch.Path))
		if ch.Kind == "extra" {
			if err := os.RemoveAll(dst); err != nil {
				return err
			}
			continue
		}
		src := filepath.Join(tmp, filepath.FromSlash(ch.Path))
		if fi, err := os.Lstat(src); err == nil && fi.IsDir() {
			if err := os.Chmod(dst, fi.Mode().Perm()); err != nil { // a directory's mode
				return err
			}
			continue
		}
		os.RemoveAll(dst)
		if err := os.Rename(src, dst); err != nil {
			return err
		}
	}
	return nil
}

// isLocked reports whether p (absolute) is, or is under, a locked path.
func isLocked(p string, locked []string) bool {
	for _, l := range locked {
		if p == l || strings.HasPrefix(p, l+"/") {
			return true
		}
	}
	return false
}

// Diff shows how this host's exposed view of a layer differs from the
// published manifest.
func (n *Node) Diff(ctx context.Context, name, host string) (*api.DiffResult, error) {
	nm, err := chunk.ParseName(name)
	if err != nil {
		return nil, badRequest(err)
	}
	if host != "" && host != n.host.ID().String() {
		return n.remoteDiff(ctx, nm.String(), host)
	}
	recs, err := n.db.Records(actKey(nm.String()))
	if err != nil {
		return nil, err
	}
	b, ok := recs[actKey(nm.String())]
	var e exposed
	if !ok || json.Unmarshal(b, &e) != nil || !e.Exposed {
		return nil, &codedError{api.CodeConflict, fmt.Errorf("layer %s is not exposed on this host: nothing to compare (activate it, or check it out and compare yourself)", nm)}
	}
	id, err := cid.Decode(e.CID)
	if err != nil {
		return nil, err
	}
	m, err := n.db.GetManifest(ctx, id)
	if err == nil {
		m, err = n.flat(ctx, m)
	}
	if err != nil {
		return nil, err
	}
	if e.Mode == ModeOverlay {
		changes, err := tree.UpperChanges(m, n.upperDir(e.Layer))
		if err != nil {
			return nil, fmt.Errorf("diff %s: %w", nm, err)
		}
		return &api.DiffResult{Layer: nm.String(), CID: e.CID, Path: e.Path, Changes: changes}, nil
	}
	// The reconciler may swap a restored copy in while we read: look again.
	var changes []tree.Change
	for try := 0; ; try++ {
		if changes, err = tree.Diff(ctx, m, e.Path); err == nil || try == 3 {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("diff %s: %w", nm, err)
	}
	return &api.DiffResult{Layer: nm.String(), CID: e.CID, Path: e.Path, Changes: changes}, nil
}

// Conflicts are this host's policy conflicts, by layer.
func (n *Node) Conflicts() map[string]*policy.Conflict {
	n.policies.mu.Lock()
	defer n.policies.mu.Unlock()
	out := map[string]*policy.Conflict{}
	for k, v := range n.policies.conflicts {
		out[k] = v
	}
	return out
}

// diffProto asks another host for its diff of a layer (`diff --host`):
// request a layer name (one line), answer one JSON object, a DiffResult
// or {"error": "..."}.
const diffProto = protocol.ID("/p2pimg/diff/1.0.0")

func (n *Node) handleDiff(s network.Stream) {
	defer s.Close()
	s.SetDeadline(time.Now().Add(time.Minute))
	line, err := bufio.NewReader(io.LimitReader(s, 512)).ReadString('\n')
	if err != nil {
		s.Reset()
		return
	}
	r, err := n.Diff(context.Background(), strings.TrimSpace(line), "")
	var out any = r
	if err != nil {
		out = map[string]string{"error": err.Error()}
	}
	json.NewEncoder(s).Encode(out)
}

func (n *Node) remoteDiff(ctx context.Context, name, host string) (*api.DiffResult, error) {
	id, err := peer.Decode(host)
	if err != nil {
		return nil, badRequestf("--host %q: %v", host, err)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	s, err := n.host.NewStream(ctx, id, diffProto)
	if err != nil {
		return nil, fmt.Errorf("diff on %s: %w", shortID(id), err)
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		s.SetDeadline(dl)
	}
	if _, err := io.WriteString(s, name+"\n"); err != nil {
		return nil, err
	}
	var resp struct {
		api.DiffResult
		Error string `json:"error"`
	}
	if err := json.NewDecoder(io.LimitReader(s, 16<<20)).Decode(&resp); err != nil {
		return nil, fmt.Errorf("diff on %s: %w", shortID(id), err)
	}
	if resp.Error != "" {
		return nil, &codedError{api.CodeConflict, fmt.Errorf("on %s: %s", shortID(id), resp.Error)}
	}
	return &resp.DiffResult, nil
}
