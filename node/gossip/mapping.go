// Package gossip is the cluster catalogue: the small signed records hosts
// announce (layer mappings, activations, holdings, host states, labels and
// policies), their wire form, signing and validation, the flood limit per
// host, the announcer that gossips this host's changes, and the
// anti-entropy that repairs what a host missed by comparing digests with
// one peer and pulling the difference. Gossip carries changes, never a
// host's whole state; it announces, never decides who owns a seat, and
// never moves chunks.
package gossip

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/license"
	"github.com/p2pimg/p2pimg/policy"
)

// Mapping says that layer NAME:TAG is the manifest CID, signed by the host
// that published it. Signed by the publisher, not by whoever gossips it, so
// any host can pass the catalogue on to one that joins late.
type Mapping struct {
	Name      string `json:"name"`
	CID       string `json:"cid"`
	Size      int64  `json:"size"`
	Published int64  `json:"published"` // unix nanoseconds
	Publisher string `json:"publisher"` // peer id
	// Product names the licensed product the layer needs: activating it
	// claims a seat on each host first.
	Product string `json:"product,omitempty"`
	// Policy is the layer policy (policy.Layer, canonical JSON) its
	// publisher set: who holds it, sync mode, minimum copies.
	Policy json.RawMessage `json:"policy,omitempty"`
	Sig    []byte          `json:"sig"`
}

func (m *Mapping) signedBytes() []byte {
	b := "p2pimg mapping v1\n" + m.Name + "\n" + m.CID + "\n" + strconv.FormatInt(m.Size, 10) + "\n" +
		strconv.FormatInt(m.Published, 10) + "\n" + m.Publisher
	if m.Product != "" {
		b += "\nproduct " + m.Product
	}
	if len(m.Policy) > 0 {
		h := sha256.Sum256(m.Policy)
		b += "\npolicy " + hex.EncodeToString(h[:])
	}
	return []byte(b)
}

// SignMapping signs m with key, which becomes its publisher.
func SignMapping(key crypto.PrivKey, m Mapping) (Mapping, error) {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return m, err
	}
	m.Publisher = id.String()
	m.Sig, err = key.Sign(m.signedBytes())
	return m, err
}

// Newer orders two mappings of one name: the later publication wins, and
// equal times fall to the larger CID, so every host picks the same one.
func (m *Mapping) Newer(o Mapping) bool {
	if m.Published != o.Published {
		return m.Published > o.Published
	}
	return m.CID > o.CID
}

// ParseManifestCID reads a manifest id (CIDv1, manifest codec).
func ParseManifestCID(s string) (cid.Cid, error) {
	id, err := cid.Decode(s)
	if err != nil {
		return cid.Undef, fmt.Errorf("manifest id %.70q: %v", s, err)
	}
	if id.Version() != 1 || id.Type() != chunk.ManifestCodec {
		return cid.Undef, fmt.Errorf("%s is not a manifest id", id)
	}
	return id, nil
}

// CheckMapping validates a mapping completely: fields, publisher and signature.
func CheckMapping(m *Mapping, mayPublish func(peer.ID) bool) error {
	if _, err := chunk.ParseName(m.Name); err != nil {
		return err
	}
	if _, err := ParseManifestCID(m.CID); err != nil {
		return err
	}
	if m.Size < 0 || m.Published <= 0 {
		return fmt.Errorf("%s: size %d, published %d", m.Name, m.Size, m.Published)
	}
	if m.Product != "" {
		if err := license.CheckProduct(m.Product); err != nil {
			return fmt.Errorf("%s: %v", m.Name, err)
		}
	}
	if len(m.Policy) > 0 {
		if _, err := LayerPolicy(m.Policy); err != nil {
			return fmt.Errorf("%s: %v", m.Name, err)
		}
	}
	pub, err := peer.Decode(m.Publisher)
	if err != nil {
		return fmt.Errorf("%s: publisher %.60q: %v", m.Name, m.Publisher, err)
	}
	if !mayPublish(pub) {
		return fmt.Errorf("%s: %s may not publish layers in this cluster", m.Name, pub)
	}
	key, err := pub.ExtractPublicKey()
	if err != nil {
		return fmt.Errorf("%s: publisher key: %v", m.Name, err)
	}
	ok, err := key.Verify(m.signedBytes(), m.Sig)
	if err != nil || !ok {
		return fmt.Errorf("%s: bad signature by %s", m.Name, pub)
	}
	return nil
}

// LayerPolicy decodes the policy of a mapping; only the canonical form is
// accepted, so one policy has one signed encoding.
func LayerPolicy(raw json.RawMessage) (policy.Layer, error) {
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
