package cluster

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// ErrBadProof: an operator header that does not prove an operator key.
var ErrBadProof = errors.New("operator key proof refused")

// proofSkew is how far a proof's time may be from the daemon's clock.
const proofSkew = 2 * time.Minute

func proofBytes(method, uri string, body []byte, t int64) []byte {
	sum := sha256.Sum256(body)
	return []byte("p2pimg local api request v1\n" + method + "\n" + uri + "\n" + strconv.FormatInt(t, 10) + "\n" + hex.EncodeToString(sum[:]))
}

// SignRequest signs one local API request (its method, path with query,
// and body) with an operator key, giving the value of the operator
// header: "KEYID TIME SIGNATURE".
func SignRequest(k crypto.PrivKey, method, uri string, body []byte, now time.Time) (string, error) {
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		return "", err
	}
	t := now.UnixNano()
	sig, err := k.Sign(proofBytes(method, uri, body, t))
	if err != nil {
		return "", err
	}
	return id.String() + " " + strconv.FormatInt(t, 10) + " " + base64.RawStdEncoding.EncodeToString(sig), nil
}

// VerifyRequest checks an operator header: signed by a key this cluster
// file lists under operators, for exactly this method, URI and body, and
// made within two minutes of now. It returns the operator.
func (c *Config) VerifyRequest(h, method, uri string, body []byte, now time.Time) (peer.ID, error) {
	f := strings.Fields(h)
	if len(f) != 3 {
		return "", fmt.Errorf("%w: want \"KEYID TIME SIGNATURE\"", ErrBadProof)
	}
	id, err := peer.Decode(f[0])
	if err != nil {
		return "", fmt.Errorf("%w: key id %.60q: %v", ErrBadProof, f[0], err)
	}
	if !c.IsOperator(id) {
		return "", fmt.Errorf("%w: %s is not listed under operators in the cluster file", ErrBadProof, id)
	}
	t, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return "", fmt.Errorf("%w: time %.30q", ErrBadProof, f[1])
	}
	if d := now.Sub(time.Unix(0, t)); d > proofSkew || d < -proofSkew {
		return "", fmt.Errorf("%w: signed %s away from this host's clock (at most %s)", ErrBadProof, d.Round(time.Second), proofSkew)
	}
	sig, err := base64.RawStdEncoding.DecodeString(f[2])
	if err != nil {
		return "", fmt.Errorf("%w: signature: %v", ErrBadProof, err)
	}
	pub, err := id.ExtractPublicKey()
	if err != nil {
		return "", fmt.Errorf("%w: key %s: %v", ErrBadProof, id, err)
	}
	if ok, err := pub.Verify(proofBytes(method, uri, body, t), sig); err != nil || !ok {
		return "", fmt.Errorf("%w: the signature does not match this request", ErrBadProof)
	}
	return id, nil
}
