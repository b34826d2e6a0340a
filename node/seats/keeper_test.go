package seats

import (
	"bufio"
	"bytes"
	"testing"

	"github.com/p2pimg/p2pimg/license"
)

// FuzzSeatRequest feeds arbitrary bytes to the keeper's request reader:
// it must refuse or decode, never panic or read past its limit.
func FuzzSeatRequest(f *testing.F) {
	var buf bytes.Buffer
	writeMsg(&buf, seatReq{Op: license.OpClaim, Product: "p", Consumer: "vm1", Session: "s"})
	f.Add(buf.Bytes())
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, data []byte) {
		var req seatReq
		if err := readMsg(bufio.NewReader(bytes.NewReader(data)), maxSeatMsg, &req); err != nil {
			return
		}
		var resp seatResp
		readMsg(bufio.NewReader(bytes.NewReader(data)), maxSeatMsg, &resp)
	})
}

func TestSeatMessageLimits(t *testing.T) {
	var buf bytes.Buffer
	writeMsg(&buf, seatReq{Op: license.OpClaim, Product: string(make([]byte, maxSeatMsg))})
	var req seatReq
	if err := readMsg(bufio.NewReader(&buf), maxSeatMsg, &req); err == nil {
		t.Fatal("oversized seat request accepted")
	}
	buf.Reset()
	buf.Write([]byte{3, 0xa1, 0x63, 0x78}) // truncated CBOR
	if err := readMsg(bufio.NewReader(&buf), maxSeatMsg, &req); err == nil {
		t.Fatal("malformed seat request accepted")
	}
}
