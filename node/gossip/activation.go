package gossip

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"unicode"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/cluster"
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
	Maps []string `json:"maps,omitempty"`
	// Lazy: hosts exposing the layer through FUSE make it active once the
	// manifest is here and fetch chunks as they are read.
	Lazy   bool   `json:"lazy,omitempty"`
	Op     api.Op `json:"op"`     // activate or deactivate
	Time   int64  `json:"time"`   // unix nanoseconds
	Signer string `json:"signer"` // peer id form of the signing key
	Sig    []byte `json:"sig"`
}

func (a *Activation) signedBytes() []byte {
	b := "p2pimg activation v1\n" + a.Layer + "\n" + a.CID + "\n" + a.At + "\n" + a.Hosts + "\n" +
		string(a.Op) + "\n" + strconv.FormatInt(a.Time, 10) + "\n" + a.Signer + "\n" + strings.Join(a.Maps, "\x00")
	if a.Lazy { // only then: activations signed before the field existed stay valid
		b += "\nlazy"
	}
	return []byte(b)
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

// Newer orders activations of one layer: later time, then larger signature.
func (a *Activation) Newer(b Activation) bool {
	if a.Time != b.Time {
		return a.Time > b.Time
	}
	return bytes.Compare(a.Sig, b.Sig) > 0
}

// Key identifies what an activation replaces: the same layer and selector.
func (a *Activation) Key() string { return a.Layer + "|" + a.Hosts }

// checkSelector validates a --hosts selector.
// CheckSelector checks a hosts selector's syntax (all, ID,ID,... or
// key=value), as clients do before they sign.
func CheckSelector(s string) error { return checkSelector(s) }

func checkSelector(s string) error {
	switch {
	case s == "all":
		return nil
	case strings.Contains(s, "="):
		if _, _, err := api.ParseLabel(s); err != nil {
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

// Selects reports whether the activation applies to host id with labels.
func (a *Activation) Selects(id peer.ID, labels map[string]string) bool {
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

// CheckActivation validates an activation completely: fields, signature,
// and that its signer may say it.
func CheckActivation(a *Activation, c *cluster.Config) error {
	if _, err := chunk.ParseName(a.Layer); err != nil {
		return err
	}
	if _, err := ParseManifestCID(a.CID); err != nil {
		return err
	}
	if !a.Op.Valid() {
		return fmt.Errorf("activation of %s: op %q", a.Layer, a.Op)
	}
	if a.Op == api.OpActivate && (!filepath.IsAbs(a.At) || filepath.Clean(a.At) != a.At || len(a.At) > 4096 || a.At == "/" ||
		strings.ContainsFunc(a.At, unicode.IsControl)) {
		return fmt.Errorf("activation of %s: path %.80q must be absolute, clean, not / and without control characters", a.Layer, a.At)
	}
	if err := checkSelector(a.Hosts); err != nil {
		return err
	}
	if len(a.Maps) > 64 {
		return fmt.Errorf("activation of %s: %d maps, at most 64", a.Layer, len(a.Maps))
	}
	for _, m := range a.Maps {
		if _, _, err := api.ParseMap(m); err != nil {
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

// HostState is a host's report on one layer's activation.
type HostState struct {
	Layer  string    `json:"layer"`
	CID    string    `json:"cid"`
	At     string    `json:"at,omitempty"`
	State  api.State `json:"state"`
	Detail string    `json:"detail,omitempty"`
	Time   int64     `json:"time"` // of the activation it answers
	Mode   api.Mode  `json:"mode,omitempty"`
	// Trace is the chunk holding the access trace this host recorded after
	// exposing CID lazily (the chunks read first): hosts activating the
	// same version fetch those chunks first.
	Trace string `json:"trace,omitempty"`
	// Done and Total are the bytes of a fetch in progress, Peers the
	// hosts it draws from (state fetching only).
	Done  int64 `json:"done,omitempty"`
	Total int64 `json:"total,omitempty"`
	Peers int   `json:"peers,omitempty"`
}
