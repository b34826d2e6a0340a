package seats

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/p2pimg/p2pimg/chunk/strictcbor"
	"github.com/p2pimg/p2pimg/license"
	"github.com/p2pimg/p2pimg/node/xchg"
)

// Seats are decided by a Raft group of keeper hosts. Raft runs over libp2p
// streams (gostream), so the PSK, the members list and the peer blocks of
// the gater apply to it like to everything else. Every host sends its seat
// requests to a keeper over seatProto; a keeper that is not the leader
// answers with the leader's id.
const (
	raftProto = protocol.ID("/p2pimg/raft/1.0.0")
	seatProto = protocol.ID("/p2pimg/seats/1.0.0")

	maxSeatMsg   = 64 << 10
	maxSeatResp  = 16 << 20
	seatDeadline = 10 * time.Second
	// changeDeadline bounds a keeper change: the leader has the new keeper
	// start, then commits the new configuration.
	changeDeadline = 45 * time.Second
)

// seatReq is one request to a keeper. The requesting host is the stream's
// authenticated remote peer, never a field.
type seatReq struct {
	Op       license.Op `cbor:"1,keyasint"`
	Product  string     `cbor:"2,keyasint,omitempty"`
	Consumer string     `cbor:"3,keyasint,omitempty"`
	Session  string     `cbor:"4,keyasint,omitempty"`
	Tokens   []uint64   `cbor:"5,keyasint,omitempty"`
	License  []byte     `cbor:"6,keyasint,omitempty"`
	Change   []byte     `cbor:"7,keyasint,omitempty"` // a signed KeeperChange
}

// Requests beside the commands of license.Op: read-only ones, and the
// keeper changes (opKeeperChange to the leader; opKeeperJoin from the
// leader to the host it adds).
const (
	opCheck license.Op = 100 + iota
	opTable
	opKeepers
	opKeeperChange
	opKeeperJoin
)

type seatResp struct {
	Result    license.Result `cbor:"1,keyasint"`
	NotLeader bool           `cbor:"2,keyasint,omitempty"`
	Leader    string         `cbor:"3,keyasint,omitempty"` // hint when NotLeader
	Err       string         `cbor:"4,keyasint,omitempty"` // the keeper could not decide
	Seat      *license.Seat  `cbor:"5,keyasint,omitempty"` // check: the seat of the token
	Table     []byte         `cbor:"6,keyasint,omitempty"` // table: the keeper's seat table
	Keepers   *raftConfig    `cbor:"7,keyasint,omitempty"` // keepers: the Raft configuration
	Change    []byte         `cbor:"8,keyasint,omitempty"` // the newest keeper change the keeper knows
}

// raftConfig is the keepers' Raft configuration as one keeper sees it.
type raftConfig struct {
	Index   uint64       `cbor:"1,keyasint"`
	Leader  string       `cbor:"2,keyasint,omitempty"`
	Servers []raftServer `cbor:"3,keyasint"`
}

type raftServer struct {
	ID    string `cbor:"1,keyasint"`
	Voter bool   `cbor:"2,keyasint"`
}

var seatDec = strictcbor.Decoder(4096, 256)

func writeMsg(w io.Writer, v any) error {
	b, err := cbor.Marshal(v)
	if err != nil {
		return err
	}
	var l [binary.MaxVarintLen64]byte
	bw := bufio.NewWriter(w)
	bw.Write(l[:binary.PutUvarint(l[:], uint64(len(b)))])
	bw.Write(b)
	return bw.Flush()
}

func readMsg(r *bufio.Reader, max int, v any) error {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return err
	}
	if n > uint64(max) {
		return fmt.Errorf("%w: message of %d bytes (at most %d)", xchg.ErrProtocol, n, max)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return err
	}
	if err := seatDec.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %v", xchg.ErrProtocol, err)
	}
	return nil
}
