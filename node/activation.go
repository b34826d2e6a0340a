package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/sys/unix"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/tree"
	"github.com/p2pimg/p2pimg/node/api"
)

// Activation operations.
const (
	OpActivate   = "activate"
	OpDeactivate = "deactivate"
)

// Host states of an activation, as each host reports them.
const (
	StateRequested    = "requested"
	StateFetching     = "fetching"
	StateDeactivating = "deactivating"
	StateActive       = "active"
	StateInactive     = "inactive"
	StateFailed       = "failed"
	StateWaitingSeat  = "waiting-for-seat"
)

// Activation asks the hosts it selects to expose a layer at a path (or to
// stop). It is signed by an operator key from the cluster file, or by a
// host's own key when it selects only that host. For each layer, every host
// applies the newest activation that selects it.
type Activation struct {
	Layer string `json:"layer"` // NAME:TAG
	CID   string `json:"cid"`   // the manifest, pinned when issued
	At    string `json:"at"`    // absolute path, under the host's --root
	Hosts string `json:"hosts"` // "all", "ID,ID,...", or "key=value" (a label)
	// Maps are SRC=DST pairs: while the layer is active, the host path SRC
	// (under --root) resolves to DST inside the layer.
	Maps   []string `json:"maps,omitempty"`
	Op     string   `json:"op"`     // activate or deactivate
	Time   int64    `json:"time"`   // unix nanoseconds
	Signer string   `json:"signer"` // peer id form of the signing key
	Sig    []byte   `json:"sig"`
}

func (a *Activation) signedBytes() []byte {
	return []byte("p2pimg activation v1\n" + a.Layer + "\n" + a.CID + "\n" + a.At + "\n" + a.Hosts + "\n" +
		a.Op + "\n" + strconv.FormatInt(a.Time, 10) + "\n" + a.Signer + "\n" + strings.Join(a.Maps, "\x00"))
}

// SignActivation signs a with key (which becomes its signer).
func SignActivation(key crypto.PrivKey, a Activation) (Activation, error) {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return a, err
	}
	a.Signer = id.String()
	a.Sig, err = key.Sign(a.signedBytes())
	return a, err
}

// newer orders activations of one layer: later time, then larger signature.
func (a *Activation) newer(b Activation) bool {
	if a.Time != b.Time {
		return a.Time > b.Time
	}
	return bytes.Compare(a.Sig, b.Sig) > 0
}

// key identifies what an activation replaces: the same layer and selector.
func (a *Activation) key() string { return a.Layer + "|" + a.Hosts }

var labelRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}=[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// checkSelector validates a --hosts selector.
func checkSelector(s string) error {
	switch {
	case s == "all":
		return nil
	case strings.Contains(s, "="):
		if !labelRE.MatchString(s) {
			return fmt.Errorf("hosts %q: a label selector is key=value (letters, digits, '.', '_', '-')", s)
		}
		return nil
	}
	for _, id := range strings.Split(s, ",") {
		if _, err := peer.Decode(id); err != nil {
			return fmt.Errorf("hosts %q: %q is not a peer id (want all, ID,ID,... or key=value)", s, id)
		}
	}
	return nil
}

// ParseLabel reads key=value.
func ParseLabel(s string) (string, string, error) {
	if !labelRE.MatchString(s) {
		return "", "", fmt.Errorf("label %q: want key=value (letters, digits, '.', '_', '-')", s)
	}
	k, v, _ := strings.Cut(s, "=")
	return k, v, nil
}

// selects reports whether the activation applies to host id with labels.
func (a *Activation) selects(id peer.ID, labels map[string]string) bool {
	switch {
	case a.Hosts == "all":
		return true
	case strings.Contains(a.Hosts, "="):
		k, v, _ := strings.Cut(a.Hosts, "=")
		return labels[k] == v
	}
	for _, s := range strings.Split(a.Hosts, ",") {
		if s == id.String() {
			return true
		}
	}
	return false
}

// checkActivation validates an activation completely: fields, signature,
// and that its signer may say it.
func checkActivation(a *Activation, c *ClusterConfig) error {
	if _, err := chunk.ParseName(a.Layer); err != nil {
		return err
	}
	if _, err := parseManifestCID(a.CID); err != nil {
		return err
	}
	if a.Op != OpActivate && a.Op != OpDeactivate {
		return fmt.Errorf("activation of %s: op %q", a.Layer, a.Op)
	}
	if a.Op == OpActivate && (!filepath.IsAbs(a.At) || filepath.Clean(a.At) != a.At || len(a.At) > 4096 || a.At == "/") {
		return fmt.Errorf("activation of %s: path %.80q must be absolute, clean and not /", a.Layer, a.At)
	}
	if err := checkSelector(a.Hosts); err != nil {
		return err
	}
	if len(a.Maps) > 64 {
		return fmt.Errorf("activation of %s: %d maps, at most 64", a.Layer, len(a.Maps))
	}
	for _, m := range a.Maps {
		if _, _, err := ParseMap(m); err != nil {
			return fmt.Errorf("activation of %s: %w", a.Layer, err)
		}
	}
	if a.Time <= 0 {
		return fmt.Errorf("activation of %s: time %d", a.Layer, a.Time)
	}
	signer, err := peer.Decode(a.Signer)
	if err != nil {
		return fmt.Errorf("activation of %s: signer %.60q: %v", a.Layer, a.Signer, err)
	}
	if !c.IsOperator(signer) && a.Hosts != signer.String() {
		return fmt.Errorf("activation of %s: %s is not an operator of this cluster (a host may only act on itself)", a.Layer, signer)
	}
	key, err := signer.ExtractPublicKey()
	if err != nil {
		return fmt.Errorf("activation of %s: signer key: %v", a.Layer, err)
	}
	if ok, err := key.Verify(a.signedBytes(), a.Sig); err != nil || !ok {
		return fmt.Errorf("activation of %s: bad signature by %s", a.Layer, signer)
	}
	return nil
}

// ParseMap reads SRC=DST: SRC an absolute host path, DST a path inside the layer.
func ParseMap(s string) (src, dst string, err error) {
	src, dst, ok := strings.Cut(s, "=")
	dst = strings.TrimPrefix(dst, "/")
	if !ok || !filepath.IsAbs(src) || filepath.Clean(src) != src || src == "/" || len(src) > 4096 {
		return "", "", fmt.Errorf("map %.80q: want SRC=DST with SRC an absolute, clean host path", s)
	}
	if err := chunk.CheckPath(dst); err != nil {
		return "", "", fmt.Errorf("map %.80q: DST: %v", s, err)
	}
	return src, dst, nil
}

// HostState is a host's report on one layer's activation.
type HostState struct {
	Layer  string `json:"layer"`
	CID    string `json:"cid"`
	At     string `json:"at,omitempty"`
	State  string `json:"state"`
	Detail string `json:"detail,omitempty"`
	Time   int64  `json:"time"` // of the activation it answers
	Mode   string `json:"mode,omitempty"`
}

// exposed is what this host did for a layer, kept durably so that it can
// be undone after a restart.
type exposed struct {
	HostState
	Path    string    `json:"path"`    // the full path under --root
	Exposed bool      `json:"exposed"` // Path shows the layer now (our mount or our directory)
	Backup  bool      `json:"backup"`  // materialized: Path's previous contents are at Path + baseSuffix
	Created bool      `json:"created"` // overlay: Path was made for the mount
	Maps    []mapped  `json:"maps,omitempty"`
	Failed  time.Time `json:"failed,omitempty"`
	// Product: the layer needed a seat of it, held for consumer "layer:NAME".
	Product string `json:"product,omitempty"`
	// Restored counts the drifted paths mirror mode put back.
	Restored int `json:"restored,omitempty"`
	// Locked are the read-only binds over locked paths in an overlay.
	Locked []string `json:"locked,omitempty"`

	checked time.Time // last mirror check
}

const (
	newSuffix  = ".p2pimg-new"
	baseSuffix = ".p2pimg-base"
	retryAfter = 5 * time.Second
)

func actKey(layer string) string { return "act/" + layer }

func (n *Node) loadExposed() (map[string]*exposed, error) {
	recs, err := n.db.Records("act/")
	if err != nil {
		return nil, err
	}
	out := map[string]*exposed{}
	for k, v := range recs {
		var e exposed
		if err := json.Unmarshal(v, &e); err != nil {
			return nil, fmt.Errorf("activation record %s: %w", k, err)
		}
		out[e.Layer] = &e
	}
	return out, nil
}

func (n *Node) saveExposed(e *exposed) error {
	b, _ := json.Marshal(e)
	return n.db.PutRecord(actKey(e.Layer), b)
}

// exchange swaps two paths atomically.
func exchange(a, b string) error {
	return unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE)
}

// expose materialises the layer at e.Path: checked out next to it, then
// swapped in with one atomic rename. What was at the path before is kept
// beside it and comes back on deactivation.
func (n *Node) expose(ctx context.Context, e *exposed, m *chunk.Manifest) error {
	if e.Mode == ModeOverlay {
		return n.mountOverlay(ctx, e, m)
	}
	if err := os.MkdirAll(filepath.Dir(e.Path), 0o755); err != nil {
		return err
	}
	tmp := e.Path + newSuffix
	os.RemoveAll(tmp)
	if err := tree.Checkout(ctx, n.db, m, tmp, tree.CheckoutOptions{Owners: os.Geteuid() == 0}); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	_, err := os.Lstat(e.Path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.Rename(tmp, e.Path); err != nil {
			return err
		}
		e.Exposed = true
		return nil
	case err != nil:
		return err
	}
	if err := exchange(tmp, e.Path); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("swap %s in: %w", e.Path, err)
	}
	wasOurs := e.Exposed
	e.Exposed = true
	if wasOurs { // tmp now holds our previous exposure, not the host's own
		return os.RemoveAll(tmp)
	}
	if err := os.Rename(tmp, e.Path+baseSuffix); err != nil {
		return err
	}
	e.Backup = true
	return nil
}

// unexpose puts back what was at the path before the layer.
func (n *Node) unexpose(e *exposed) error {
	if e.Mode == ModeOverlay {
		if err := n.unmountOverlay(e); err != nil {
			return err
		}
		e.Exposed = false
		return nil
	}
	if !e.Backup {
		if err := os.RemoveAll(e.Path); err != nil {
			return err
		}
		e.Exposed = false
		return nil
	}
	base := e.Path + baseSuffix
	if err := exchange(base, e.Path); err != nil {
		return fmt.Errorf("restore %s: %w", e.Path, err)
	}
	e.Backup, e.Exposed = false, false
	return os.RemoveAll(base) // it holds the layer now
}

// reconcile brings every layer's local exposure in line with the newest
// activation that selects this host. It runs on the reconciler goroutine only.
func (n *Node) reconcile(ctx context.Context, local map[string]*exposed) {
	me := n.host.ID()
	want := map[string]Activation{}
	for _, a := range n.catalog.activations() {
		if !a.selects(me, n.cfg.Labels) {
			continue
		}
		if cur, ok := want[a.Layer]; !ok || a.newer(cur) {
			want[a.Layer] = a
		}
	}
	for layer, a := range want {
		if ctx.Err() != nil {
			return
		}
		e := local[layer]
		if e == nil {
			e = &exposed{HostState: HostState{Layer: layer, State: StateInactive}}
			local[layer] = e
		}
		n.step(ctx, e, a)
		n.mirrorCheck(ctx, e)
	}
}

// step moves one layer toward what activation a asks of this host.
func (n *Node) step(ctx context.Context, e *exposed, a Activation) {
	report := func(state, detail string) {
		e.State, e.Detail = state, detail
		if state == StateFailed {
			e.Failed = time.Now()
		}
		if err := n.saveExposed(e); err != nil {
			n.log.Warn("activation record", "layer", e.Layer, "err", err)
		}
		n.setStates(e.HostState)
		n.announceSoon()
	}
	exposedNow := e.Exposed
	switch a.Op {
	case OpDeactivate:
		if e.Time == a.Time && e.State == StateInactive {
			return
		}
		e.Time, e.CID = a.Time, a.CID
		if exposedNow {
			report(StateDeactivating, "")
		}
		if err := n.unmapAll(e); err != nil {
			report(StateFailed, err.Error())
			return
		}
		if exposedNow && e.Path != "" {
			if err := n.unexpose(e); err != nil {
				report(StateFailed, err.Error())
				return
			}
		}
		n.releaseLayerSeat(ctx, e)
		e.Path, e.At = "", ""
		report(StateInactive, "")
		n.log.Info("layer deactivated", "layer", e.Layer)
	case OpActivate:
		path := filepath.Join(n.cfg.Root, a.At)
		lost := e.State == StateActive && e.Mode == ModeOverlay && !Mounted(e.Path) // e.g. after a reboot
		product := n.layerProduct(a)
		seated := product == "" || n.holdsSeat(product, seatConsumer(a.Layer))
		if e.Time == a.Time && !lost && seated && (e.State == StateActive || (e.State == StateFailed && time.Since(e.Failed) < retryAfter)) {
			return
		}
		if eff, c, ok := n.effective(a.Layer); ok && (c != nil || !eff.MayActivate) {
			reason := "the layer policy does not allow activation on this host (activate=...)"
			if c != nil {
				reason = c.Error()
			}
			if e.State != StateFailed || e.Detail != "policy: "+reason || e.Time != a.Time {
				e.Time, e.CID = a.Time, a.CID
				report(StateFailed, "policy: "+reason)
			}
			return
		}
		if !seated {
			// A licensed layer: a seat first, before anything is exposed.
			// (After a daemon restart the seat is claimed again; the layer
			// stays exposed meanwhile.)
			if !n.claimLayerSeat(ctx, e, a, product) {
				return
			}
			if e.Time == a.Time && e.CID == a.CID && e.Exposed && e.Path == path && !lost && e.State == StateActive {
				report(StateActive, "")
				return
			}
		}
		if err := n.unmapAll(e); err != nil { // maps are made again for this activation
			report(StateFailed, err.Error())
			return
		}
		if exposedNow && e.Path != "" && (e.Path != path || (e.Mode != "" && e.Mode != n.exposeMode())) {
			// moved, or exposed another way: undo the old exposure first
			if err := n.unexpose(e); err != nil {
				report(StateFailed, err.Error())
				return
			}
		}
		e.Time, e.CID, e.At, e.Path, e.Mode = a.Time, a.CID, a.At, path, n.exposeMode()
		report(StateFetching, "")
		m, err := n.ensureLayer(ctx, a, func(ev api.Event) {
			if p := ev.Progress; p != nil {
				n.setStates(HostState{Layer: e.Layer, CID: e.CID, At: e.At, State: StateFetching, Time: e.Time, Mode: e.Mode,
					Detail: fmt.Sprintf("%d of %d bytes from %d peer(s)", p.Done, p.Total, p.Peers)})
				n.announceSoon()
			}
		})
		if err == nil {
			err = n.expose(ctx, e, m)
		}
		if err == nil {
			err = n.mapAll(e, a.Maps)
		}
		if err != nil {
			if ctx.Err() == nil {
				report(StateFailed, err.Error())
				n.log.Warn("activation failed", "layer", e.Layer, "err", err)
			}
			return
		}
		report(StateActive, "")
		n.log.Info("layer activated", "layer", e.Layer, "path", path)
	}
}

// ensureLayer makes the activation's pinned layer complete here.
func (n *Node) ensureLayer(ctx context.Context, a Activation, emit Emit) (*chunk.Manifest, error) {
	name, _ := chunk.ParseName(a.Layer)
	id, err := cid.Decode(a.CID)
	if err != nil {
		return nil, err
	}
	mp, ok := n.catalog.lookup(name.String())
	if !ok || mp.CID != a.CID {
		mp = Mapping{Name: name.String(), CID: a.CID}
	}
	if _, err := n.fetchMapping(ctx, name, mp, emit); err != nil {
		return nil, err
	}
	m, err := n.db.GetManifest(ctx, id)
	if err != nil {
		return nil, err
	}
	return n.flat(ctx, m)
}

// reconciler runs reconcile on every change and every second.
func (n *Node) reconciler(ctx context.Context) {
	local, err := n.loadExposed()
	if err != nil {
		n.log.Error("activations not applied", "err", err)
		return
	}
	for _, e := range local {
		n.setStates(e.HostState)
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		n.reconcile(ctx, local)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-n.actKick:
		}
	}
}

// LoadKeyFile reads a libp2p private key file (an operator key).
func LoadKeyFile(path string) (crypto.PrivKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", path, err)
	}
	k, err := crypto.UnmarshalPrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("key %s: not a key file: %w", path, err)
	}
	return k, nil
}

// NewKeyFile writes a fresh Ed25519 key (mode 0600) and returns its peer id form.
func NewKeyFile(path string) (peer.ID, error) {
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		return "", err
	}
	b, err := crypto.MarshalPrivateKey(k)
	if err != nil {
		return "", err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return peer.IDFromPrivateKey(k)
}

// Activate publishes an activation: one signed by an operator (req.Signed),
// or one for this host alone that the daemon signs itself.
func (n *Node) Activate(ctx context.Context, req api.ActivateRequest) (*api.ActivateResult, error) {
	var a Activation
	if len(req.Signed) > 0 {
		dec := json.NewDecoder(bytes.NewReader(req.Signed))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&a); err != nil {
			return nil, badRequestf("activation: %v", err)
		}
	} else {
		if req.Hosts != "self" && req.Hosts != n.host.ID().String() {
			return nil, badRequestf("activating other hosts needs an operator key (--key FILE or P2PIMG_OPERATOR_KEY); without one a host may only act on itself (--hosts self)")
		}
		name, err := chunk.ParseName(req.Layer)
		if err != nil {
			return nil, badRequest(err)
		}
		id, err := n.ResolveLayer(ctx, name.String())
		if err != nil {
			return nil, err
		}
		a = Activation{Layer: name.String(), CID: id, At: req.At, Hosts: n.host.ID().String(), Maps: req.Maps, Op: req.Op, Time: time.Now().UnixNano()}
		if a, err = SignActivation(n.key, a); err != nil {
			return nil, err
		}
	}
	if err := checkActivation(&a, n.cfg.Cluster); err != nil {
		return nil, badRequest(err)
	}
	n.catalog.mergeActivation(a)
	n.announceSoon()
	n.reconcileSoon()
	res := &api.ActivateResult{Time: a.Time, Targets: []string{}}
	res.Activation, _ = json.Marshal(a)
	if a.selects(n.host.ID(), n.cfg.Labels) {
		res.Targets = append(res.Targets, n.host.ID().String())
	}
	// Known hosts: those heard over gossip (with their labels) and those
	// connected whose first snapshot has not arrived yet.
	known := n.catalog.hosts()
	for _, p := range n.host.Network().Peers() {
		if _, ok := known[p]; !ok {
			known[p] = hostView{}
		}
	}
	for p, h := range known {
		if a.selects(p, h.labels) {
			res.Targets = append(res.Targets, p.String())
		}
	}
	n.log.Info("activation published", "layer", a.Layer, "op", a.Op, "hosts", a.Hosts, "targets", len(res.Targets))
	return res, nil
}

// ResolveLayer is the manifest CID a layer name stands for: the cluster
// catalogue's, else this host's own record.
func (n *Node) ResolveLayer(ctx context.Context, name string) (string, error) {
	if mp, ok := n.catalog.lookup(name); ok {
		return mp.CID, nil
	}
	nm, err := chunk.ParseName(name)
	if err != nil {
		return "", badRequest(err)
	}
	l, err := n.db.GetLayer(ctx, nm)
	if err != nil {
		return "", fmt.Errorf("layer %s is not in the cluster catalogue or on this host: %w", name, chunk.ErrNotFound)
	}
	return l.CID, nil
}

// Activations is every known host's state for every layer it was asked about.
func (n *Node) Activations() []api.HostActivation {
	out := []api.HostActivation{}
	add := func(host string, st HostState) {
		out = append(out, api.HostActivation{Host: host, Layer: st.Layer, CID: st.CID, At: st.At, State: st.State, Detail: st.Detail, Time: st.Time, Mode: st.Mode})
	}
	n.stMu.Lock()
	for _, st := range n.states {
		add(n.host.ID().String(), st)
	}
	n.stMu.Unlock()
	for p, h := range n.catalog.hosts() {
		for _, st := range h.states {
			add(p.String(), st)
		}
	}
	return out
}
