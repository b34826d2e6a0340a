package gossip

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/policy"
)

// Kind is what a record says.
type Kind uint8

// Record kinds. A mapping or an activation carries its own signature (by
// its publisher or signer, who is the record's origin); the others are
// facts a host states about itself, signed by that host in the envelope.
const (
	KindMapping    Kind = 1 // key: NAME:TAG; data: Mapping
	KindActivation Kind = 2 // key: Activation.Key(); data: Activation
	KindHolding    Kind = 3 // key: manifest CID; data: holding; empty: no longer held
	KindState      Kind = 4 // key: NAME:TAG; data: HostState; empty: forgotten
	KindHost       Kind = 5 // key: ""; data: hostInfo (labels, host policy)
)

func (k Kind) String() string {
	switch k {
	case KindMapping:
		return "mapping"
	case KindActivation:
		return "activation"
	case KindHolding:
		return "holding"
	case KindState:
		return "state"
	case KindHost:
		return "host"
	}
	return "kind " + strconv.Itoa(int(k))
}

// Record is one fact of the catalogue: what (Kind, Key), who says it
// (Origin, a peer id) and which version (Version, unix nanoseconds at its
// origin; for one origin, kind and key a higher version replaces a lower).
// Data empty is a deletion, kept so that it travels like any change.
type Record struct {
	Kind    Kind            `json:"k"`
	Origin  string          `json:"o"`
	Key     string          `json:"key"`
	Version int64           `json:"v"`
	Data    json.RawMessage `json:"d,omitempty"`
	Sig     []byte          `json:"s,omitempty"` // host-stated kinds: the origin's signature
}

// holding is the data of a KindHolding record.
type holding struct {
	Complete bool `json:"complete"`
}

// hostInfo is the data of a KindHost record.
type hostInfo struct {
	Name   string            `json:"name,omitempty"` // the host's name for people (its hostname by default)
	Labels map[string]string `json:"labels,omitempty"`
	Policy json.RawMessage   `json:"policy,omitempty"` // policy.Host, canonical JSON
	Store  *StoreSummary     `json:"store,omitempty"`  // absent: not read yet, or an older host
}

// Limits of one record and of the future its version may claim.
const (
	maxRecordData = 16 << 10
	maxKey        = 1024
	maxHostName   = 253
	maxFutureSkew = 5 * time.Minute
)

func (r *Record) signedBytes() []byte {
	h := sha256.Sum256(r.Data)
	return []byte("p2pimg record v1\n" + r.Kind.String() + "\n" + r.Origin + "\n" + r.Key + "\n" +
		strconv.FormatInt(r.Version, 10) + "\n" + hex.EncodeToString(h[:]))
}

// digest identifies a record's content for the catalogue's summaries.
func (r *Record) digest() [32]byte {
	h := sha256.New()
	h.Write([]byte{byte(r.Kind)})
	h.Write([]byte(r.Key))
	h.Write([]byte{0})
	h.Write(strconv.AppendInt(nil, r.Version, 10))
	h.Write([]byte{0})
	h.Write(r.Data)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// slot is where a record lives in its origin's set: one per kind and key.
func (r *Record) slot() string { return string(rune(r.Kind)) + r.Key }

// signRecord signs a host-stated record with the host's key.
func signRecord(key crypto.PrivKey, r Record) (Record, error) {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return r, err
	}
	r.Origin = id.String()
	r.Sig, err = key.Sign(r.signedBytes())
	return r, err
}

// mappingRecord wraps a signed mapping.
func mappingRecord(m Mapping) Record {
	b, _ := json.Marshal(m)
	return Record{Kind: KindMapping, Origin: m.Publisher, Key: m.Name, Version: m.Published, Data: b}
}

// activationRecord wraps a signed activation.
func activationRecord(a Activation) Record {
	b, _ := json.Marshal(a)
	return Record{Kind: KindActivation, Origin: a.Signer, Key: a.Key(), Version: a.Time, Data: b}
}

// decodeStrict decodes JSON that must match v exactly (no unknown fields,
// nothing after it): the envelopes (messages, sync frames), whose unknown
// fields no signature covers. Record data: see decodeSigned, decodeStated.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}

// checked is a record that passed CheckRecord, with its data decoded.
type checked struct {
	Record
	origin  peer.ID
	mapping *Mapping
	act     *Activation
	holding *holding
	state   *HostState
	host    *hostInfo
	policy  policy.Host
}

// CheckRecord validates a record completely and without any state: sizes,
// fields, the signature, and that its origin may say it (a publisher for
// a mapping, an operator or the selected host itself for an activation, a
// member for what a host says of itself). now bounds how far ahead its
// version may be.
func CheckRecord(r Record, c *cluster.Config, now time.Time) (*checked, error) {
	out := &checked{Record: r}
	if len(r.Data) > maxRecordData || len(r.Key) > maxKey || len(r.Sig) > 256 {
		return nil, fmt.Errorf("%s record: %d data bytes, %d key bytes, %d signature bytes (at most %d, %d, 256)", r.Kind, len(r.Data), len(r.Key), len(r.Sig), maxRecordData, maxKey)
	}
	if r.Version <= 0 || r.Version > now.Add(maxFutureSkew).UnixNano() {
		return nil, fmt.Errorf("%s record %.80q: version %d is not a time up to %s ahead", r.Kind, r.Key, r.Version, maxFutureSkew)
	}
	origin, err := peer.Decode(r.Origin)
	if err != nil {
		return nil, fmt.Errorf("%s record %.80q: origin %.60q: %v", r.Kind, r.Key, r.Origin, err)
	}
	out.origin = origin
	switch r.Kind {
	case KindMapping, KindActivation:
		err = out.checkSigned(c)
	case KindHolding, KindState, KindHost:
		err = out.checkStated(c)
	default:
		err = fmt.Errorf("unknown record kind %d", r.Kind)
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// checkSigned checks a mapping or activation: its own signature, and that
// the envelope says what it says.
func (out *checked) checkSigned(c *cluster.Config) error {
	r := out.Record
	if len(r.Sig) > 0 || len(r.Data) == 0 {
		return fmt.Errorf("%s record %.80q: carries its own signature, not an envelope's, and cannot be deleted", r.Kind, r.Key)
	}
	if r.Kind == KindMapping {
		var m Mapping
		if err := decodeSigned(r.Data, &m); err != nil {
			return fmt.Errorf("mapping record %.80q: %v", r.Key, err)
		}
		if err := CheckMapping(&m, c.MayPublish); err != nil {
			return fmt.Errorf("mapping record: %w", err)
		}
		if m.Publisher != r.Origin || m.Name != r.Key || m.Published != r.Version {
			return fmt.Errorf("mapping record %.80q: the envelope does not match the signed mapping", r.Key)
		}
		out.mapping = &m
		return nil
	}
	var a Activation
	if err := decodeSigned(r.Data, &a); err != nil {
		return fmt.Errorf("activation record %.80q: %v", r.Key, err)
	}
	if err := CheckActivation(&a, c); err != nil {
		return fmt.Errorf("activation record: %w", err)
	}
	if a.Signer != r.Origin || a.Key() != r.Key || a.Time != r.Version {
		return fmt.Errorf("activation record %.80q: the envelope does not match the signed activation", r.Key)
	}
	out.act = &a
	return nil
}

// checkStated checks what a host says of itself: a member, its signature,
// and the data of the kind.
func (out *checked) checkStated(c *cluster.Config) error {
	r := out.Record
	if !c.IsMember(out.origin) {
		return fmt.Errorf("%s record from %s: not a member of this cluster", r.Kind, out.origin)
	}
	key, err := out.origin.ExtractPublicKey()
	if err != nil {
		return fmt.Errorf("%s record: origin key: %v", r.Kind, err)
	}
	if ok, err := key.Verify(r.signedBytes(), r.Sig); err != nil || !ok {
		return fmt.Errorf("%s record %.80q: bad signature by %s", r.Kind, r.Key, out.origin)
	}
	switch r.Kind {
	case KindHolding:
		if _, err := ParseManifestCID(r.Key); err != nil {
			return fmt.Errorf("holding record: %w", err)
		}
		if len(r.Data) > 0 {
			out.holding = &holding{}
			if err := decodeStated(r.Data, out.holding); err != nil {
				return fmt.Errorf("holding record %s: %v", r.Key, err)
			}
		}
	case KindState:
		if _, err := chunk.ParseName(r.Key); err != nil {
			return fmt.Errorf("state record: %w", err)
		}
		if len(r.Data) > 0 {
			var st HostState
			if err := decodeStated(r.Data, &st); err != nil {
				return fmt.Errorf("state record %.80q: %v", r.Key, err)
			}
			if st.Layer != r.Key || len(st.Detail) > 1024 || len(st.At) > 4096 || len(st.State) > 32 {
				return fmt.Errorf("state record %.80q: malformed state", r.Key)
			}
			out.state = &st
		}
	case KindHost:
		if r.Key != "" || len(r.Data) == 0 {
			return fmt.Errorf("host record: want an empty key and data")
		}
		out.host = &hostInfo{}
		if err := decodeStated(r.Data, out.host); err != nil {
			return fmt.Errorf("host record of %s: %v", out.origin, err)
		}
		if len(out.host.Name) > maxHostName {
			return fmt.Errorf("host record of %s: name of %d bytes, at most %d", out.origin, len(out.host.Name), maxHostName)
		}
		if len(out.host.Labels) > 64 {
			return fmt.Errorf("host record of %s: %d labels, at most 64", out.origin, len(out.host.Labels))
		}
		for k, v := range out.host.Labels {
			if _, _, err := api.ParseLabel(k + "=" + v); err != nil {
				return fmt.Errorf("host record of %s: %w", out.origin, err)
			}
		}
		if out.host.Store != nil {
			if err := out.host.Store.check(r.Version); err != nil {
				return fmt.Errorf("host record of %s: %w", out.origin, err)
			}
		}
		if len(out.host.Policy) > 0 {
			// policy.DecodeHost would refuse fields a newer version added.
			if err := decodeStated(out.host.Policy, &out.policy); err != nil {
				return fmt.Errorf("host record of %s: host policy: %v", out.origin, err)
			}
			if err := out.policy.Validate(); err != nil {
				return fmt.Errorf("host record of %s: %w", out.origin, err)
			}
		}
	}
	return nil
}
