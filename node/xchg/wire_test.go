package xchg

import (
	"bufio"
	"bytes"
	"testing"

	"github.com/ipfs/go-cid"

	"github.com/p2pimg/p2pimg/chunk"
)

func FuzzDecodeChunkRequest(f *testing.F) {
	a, _ := chunk.SumCID([]byte("a"), chunk.SHA256)
	b, _ := chunk.SumCID([]byte("b"), chunk.BLAKE3)
	f.Add(EncodeCIDs([]cid.Cid{a, b}))
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, data []byte) {
		ids, err := DecodeCIDs(data)
		if err != nil {
			return
		}
		if len(ids) == 0 || len(ids) > MaxBatch || !bytes.Equal(EncodeCIDs(ids), data) {
			t.Fatalf("accepted %d ids that do not re-encode to the input", len(ids))
		}
	})
}

func FuzzReadFrames(f *testing.F) {
	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)
	WriteReq(w, ReqHave, []byte("x"))
	writeItem(w, StatusOK, []byte("hello"))
	w.Flush()
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReader(bytes.NewReader(data))
		if _, p, err := readReq(r); err == nil && len(p) > maxReqPayload {
			t.Fatal("oversized request accepted")
		}
		if st, d, err := ReadItem(r, 1<<10, nil); err == nil && (len(d) > 1<<10 || st > StatusMissing) {
			t.Fatal("bad item accepted")
		}
	})
}
