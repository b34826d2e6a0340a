package seats

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/chunk/strictcbor"
	"github.com/p2pimg/p2pimg/node/cluster"
)

// Who the keepers are. The cluster file's keepers seed the Raft group's
// first configuration; from the first change on, the Raft configuration is
// the truth. Every change is an operator's signed KeeperChange that states
// the whole set it leads to, so any host can check a change it hears of
// against the cluster file's operators alone and learn the keepers from it:
// the newest change a host has checked names the keepers it asks.

// Keeper change operations.
const (
	KeeperAdd    = "add"
	KeeperRemove = "remove"
)

// maxKeepers bounds a keeper set: a Raft group of more than 7 voters only
// slows every decision down.
const maxKeepers = 7

// KeeperChange is an operator's signed request to add or remove one keeper.
// Keepers is the whole set after the change (sorted), Prev the index of the
// Raft configuration it applies to: the keepers' leader applies it only to
// that configuration, so a change is applied at most once and a replayed
// one is refused.
type KeeperChange struct {
	Cluster string   `cbor:"1,keyasint" json:"cluster"`
	Op      string   `cbor:"2,keyasint" json:"op"`
	Host    string   `cbor:"3,keyasint" json:"host"`
	Keepers []string `cbor:"4,keyasint" json:"keepers"`
	Prev    uint64   `cbor:"5,keyasint" json:"prev"`
	Time    int64    `cbor:"6,keyasint" json:"time"` // unix nanoseconds, when signed
	Signer  string   `cbor:"7,keyasint" json:"signer"`
	Sig     []byte   `cbor:"8,keyasint" json:"sig"`
}

func (c *KeeperChange) signedBytes() []byte {
	return []byte("p2pimg keepers v1\n" + c.Cluster + "\n" + c.Op + "\n" + c.Host + "\n" + strings.Join(c.Keepers, ",") + "\n" +
		strconv.FormatUint(c.Prev, 10) + "\n" + strconv.FormatInt(c.Time, 10) + "\n" + c.Signer)
}

// SignKeeperChange signs c with an operator key (which becomes its signer).
func SignKeeperChange(key crypto.PrivKey, c KeeperChange) (KeeperChange, error) {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return c, err
	}
	c.Signer = id.String()
	c.Sig, err = key.Sign(c.signedBytes())
	return c, err
}

// ErrNotOperator is a keeper change signed by a key the cluster file does
// not list under operators.
var ErrNotOperator = errors.New("only an operator of this cluster may change the keepers")

// CheckKeeperChange validates a change completely: its fields, that the
// set it states follows from its operation, that its signer is an operator
// of cl, and the signature.
func CheckKeeperChange(c *KeeperChange, cl *cluster.Config) error {
	if c.Cluster != cl.Name {
		return fmt.Errorf("keeper change for cluster %.70q, this is %q", c.Cluster, cl.Name)
	}
	if c.Op != KeeperAdd && c.Op != KeeperRemove {
		return fmt.Errorf("keeper change: op %.20q (want %s or %s)", c.Op, KeeperAdd, KeeperRemove)
	}
	host, err := peer.Decode(c.Host)
	if err != nil {
		return fmt.Errorf("keeper change: host %.70q is not a peer id", c.Host)
	}
	if !cl.IsMember(host) {
		return fmt.Errorf("keeper change: %s is not a member of the cluster", host)
	}
	if len(c.Keepers) == 0 || len(c.Keepers) > maxKeepers {
		return fmt.Errorf("keeper change: %d keepers after it (want 1 to %d)", len(c.Keepers), maxKeepers)
	}
	for i, s := range c.Keepers {
		if _, err := peer.Decode(s); err != nil {
			return fmt.Errorf("keeper change: keeper %.70q is not a peer id", s)
		}
		if i > 0 && c.Keepers[i-1] >= s {
			return errors.New("keeper change: keepers not sorted or repeated")
		}
	}
	if in := slices.Contains(c.Keepers, c.Host); in != (c.Op == KeeperAdd) {
		return fmt.Errorf("keeper change: %s %s, but the set after it %s it", c.Op, host, map[bool]string{true: "names", false: "lacks"}[in])
	}
	if c.Time <= 0 || c.Prev == 0 {
		return errors.New("keeper change: no time or configuration index")
	}
	signer, err := peer.Decode(c.Signer)
	if err != nil {
		return fmt.Errorf("keeper change: signer %.70q is not a key id", c.Signer)
	}
	if !cl.IsOperator(signer) {
		return fmt.Errorf("keeper change signed by %s: %w (sign with an operator key listed under operators in the cluster file)", signer, ErrNotOperator)
	}
	key, err := signer.ExtractPublicKey()
	if err != nil {
		return fmt.Errorf("keeper change: signer key: %v", err)
	}
	if ok, err := key.Verify(c.signedBytes(), c.Sig); err != nil || !ok {
		return fmt.Errorf("keeper change: bad signature by %s", signer)
	}
	return nil
}

// Newer orders the changes of one cluster: a later configuration, then a
// later signature.
func (c *KeeperChange) Newer(than *KeeperChange) bool {
	if than == nil {
		return true
	}
	if c.Prev != than.Prev {
		return c.Prev > than.Prev
	}
	return c.Time > than.Time
}

var changeDec = strictcbor.Decoder(16, 16) // the decoder's smallest limits; CheckKeeperChange bounds the keepers

func marshalChange(c *KeeperChange) []byte {
	if c == nil {
		return nil
	}
	b, _ := strictcbor.Encoder().Marshal(c)
	return b
}

func unmarshalChange(b []byte) (*KeeperChange, error) {
	var c KeeperChange
	if err := changeDec.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("keeper change: %w", err)
	}
	return &c, nil
}

func (sv *Service) changePath() string { return filepath.Join(sv.cfg.DataDir, "keepers.change") }

// loadChange reads the newest keeper change this host checked before it
// restarted (none: the cluster file's keepers).
func (sv *Service) loadChange() error {
	b, err := os.ReadFile(sv.changePath())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("keepers: %w", err)
	}
	c, err := unmarshalChange(b)
	if err == nil {
		err = CheckKeeperChange(c, sv.cfg.Cluster)
	}
	if err != nil {
		// The operators may have changed in the cluster file: fall back on
		// its keepers and learn the current ones from them.
		sv.cfg.Log.Warn("keepers: ignoring the stored keeper change", "file", sv.changePath(), "err", err)
		return nil
	}
	sv.change = c
	return nil
}

// adoptChange takes in a change heard from a keeper, if it checks out and
// is newer than the one this host knows; it reports whether it did. The
// caller holds no lock.
func (sv *Service) adoptChange(b []byte) (bool, error) {
	known := sv.currentChange()
	if len(b) == 0 || (known != nil && bytes.Equal(b, marshalChange(known))) {
		return false, nil
	}
	c, err := unmarshalChange(b)
	if err != nil {
		return false, err
	}
	if !c.Newer(known) {
		return false, nil
	}
	if err := CheckKeeperChange(c, sv.cfg.Cluster); err != nil {
		return false, err
	}
	return sv.adopt(c), nil
}

// adopt takes in a change already checked (CheckKeeperChange) if it is
// newer than the one this host knows, and stores it; it reports whether
// it did. The caller holds no lock.
func (sv *Service) adopt(c *KeeperChange) bool {
	sv.mu.Lock()
	if !c.Newer(sv.change) {
		sv.mu.Unlock()
		return false
	}
	sv.change = c
	if sv.joining != nil && c.Prev >= sv.joining.Prev {
		sv.joining = nil // the change this host was asked to join for was decided
	}
	sv.mu.Unlock()
	if sv.cfg.DataDir != "" {
		// Lost on a failed write, it is heard again from any keeper.
		tmp := sv.changePath() + ".tmp"
		err := os.WriteFile(tmp, marshalChange(c), 0o600)
		if err == nil {
			err = os.Rename(tmp, sv.changePath())
		}
		if err != nil {
			sv.cfg.Log.Warn("keepers: could not store the keeper change", "err", err)
		}
	}
	sv.cfg.Log.Info("keepers changed", "op", c.Op, "host", c.Host, "keepers", len(c.Keepers), "configuration", c.Prev, "operator", c.Signer)
	sv.setChanged.Notify()
	return true
}

// keeperIDs are the keepers this host asks: those of the newest change it
// checked, else the cluster file's.
func (sv *Service) keeperIDs() []peer.ID {
	sv.mu.Lock()
	c := sv.change
	sv.mu.Unlock()
	if c == nil {
		return sv.cfg.Cluster.KeeperIDs()
	}
	ids := make([]peer.ID, 0, len(c.Keepers))
	for _, s := range c.Keepers {
		id, _ := peer.Decode(s) // checked when adopted
		ids = append(ids, id)
	}
	return ids
}

func (sv *Service) isKeeper(id peer.ID) bool { return slices.Contains(sv.keeperIDs(), id) }

// wantKeeper reports whether this host should run a keeper: it is one of
// the keepers, or the leader asked it to join.
func (sv *Service) wantKeeper() bool {
	sv.mu.Lock()
	joining := sv.joining != nil
	sv.mu.Unlock()
	return joining || sv.isKeeper(sv.cfg.Host.ID())
}

// bootstraps reports whether this host's keeper may found the Raft group
// when it has no state: only a keeper of the cluster file, before any
// change was made.
func (sv *Service) bootstraps() bool {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	return sv.change == nil && sv.joining == nil && sv.cfg.Cluster.IsKeeper(sv.cfg.Host.ID())
}
