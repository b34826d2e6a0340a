package gossip

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/p2pimg/p2pimg/node/cluster"
)

// The catalogue's wire forms. Gossip messages carry changes: a batch of
// records, at most MaxMessageBytes. The sync stream carries length-prefixed
// JSON frames, request then answer, at most maxFrame each:
//
//	{"op":"root","alive":bool}          -> {"root":H, "alive":liveness report when asked}
//	{"op":"buckets"}                    -> {"buckets":[64 x H]}
//	{"op":"sums","buckets":[b,...]}     -> {"sums":[Summary,...]}
//	{"op":"pull","want":[{"o":O,"since":V},...]} -> {"records":[Record,...],"next":[wants left]}
const (
	// MaxMessageBytes bounds one gossip message.
	MaxMessageBytes = 1 << 20
	maxFrame        = 8 << 20
	maxPullRecords  = 4096
	maxWant         = 4096
	maxAlive        = 4096
)

// batch is one gossip message.
type batch struct {
	Records []Record `json:"records"`
}

// decodeBatch parses and checks a gossip message: every record must be
// valid, or the whole message is refused.
func decodeBatch(data []byte, c *cluster.Config, now time.Time) ([]*checked, error) {
	if len(data) > MaxMessageBytes {
		return nil, fmt.Errorf("gossip message of %d bytes, at most %d", len(data), MaxMessageBytes)
	}
	var b batch
	if err := decodeStrict(data, &b); err != nil {
		return nil, fmt.Errorf("gossip message: %v", err)
	}
	if len(b.Records) == 0 {
		return nil, errors.New("gossip message: no records")
	}
	return checkAll(b.Records, c, now)
}

func checkAll(rs []Record, c *cluster.Config, now time.Time) ([]*checked, error) {
	out := make([]*checked, 0, len(rs))
	for i, r := range rs {
		ck, err := CheckRecord(r, c, now)
		if err != nil {
			return nil, fmt.Errorf("record %d: %w", i, err)
		}
		out = append(out, ck)
	}
	return out, nil
}

// syncReq is one request of the sync stream.
type syncReq struct {
	Op      string `json:"op"`
	Alive   bool   `json:"alive,omitempty"`
	Buckets []int  `json:"buckets,omitempty"`
	Want    []want `json:"want,omitempty"`
}

type want struct {
	Origin string `json:"o"`
	Since  int64  `json:"since"` // -1: every record of the origin
}

// syncResp is one answer of the sync stream.
type syncResp struct {
	Root    []byte    `json:"root,omitempty"`
	Buckets [][]byte  `json:"buckets,omitempty"`
	Alive   []byte    `json:"alive,omitempty"` // liveness report: 12 bytes a host, see aliveReport
	Sums    []Summary `json:"sums,omitempty"`
	Records []Record  `json:"records,omitempty"`
	Next    []want    `json:"next,omitempty"` // what the answer was cut short of: ask again

	Err string `json:"err,omitempty"`
}

// writeFrame sends v as one frame; it returns the frame's size.
func writeFrame(w *bufio.Writer, v any) (int, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return 0, err
	}
	var l [binary.MaxVarintLen64]byte
	n, _ := w.Write(l[:binary.PutUvarint(l[:], uint64(len(b)))])
	w.Write(b)
	return n + len(b), w.Flush()
}

// errFrame is a sync frame that breaks the format.
var errFrame = errors.New("catalogue sync: malformed frame")

// readFrame reads one frame into v; it returns the frame's payload size.
func readFrame(r *bufio.Reader, v any) (int, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return 0, err
	}
	if n > maxFrame {
		return 0, fmt.Errorf("%w: %d bytes, at most %d", errFrame, n, maxFrame)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return 0, err
	}
	if err := decodeStrict(b, v); err != nil {
		return 0, fmt.Errorf("%w: %v", errFrame, err)
	}
	return int(n), nil
}

// checkReq bounds what a request may ask.
func checkReq(q *syncReq) error {
	switch q.Op {
	case "root", "buckets":
	case "sums":
		if len(q.Buckets) > numBuckets {
			return fmt.Errorf("%w: %d buckets", errFrame, len(q.Buckets))
		}
		for _, b := range q.Buckets {
			if b < 0 || b >= numBuckets {
				return fmt.Errorf("%w: bucket %d", errFrame, b)
			}
		}
	case "pull":
		if len(q.Want) == 0 || len(q.Want) > maxWant {
			return fmt.Errorf("%w: %d origins wanted", errFrame, len(q.Want))
		}
	default:
		return fmt.Errorf("%w: op %.20q", errFrame, q.Op)
	}
	return nil
}
