package relay

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/p2pimg/p2pimg/chunk"
)

// frameBody is a 'C' frame's body for id bytes idb and data.
func frameBody(idb, data []byte) []byte {
	var out []byte
	out = binary.AppendUvarint(out, uint64(len(idb)))
	out = append(out, idb...)
	out = binary.AppendUvarint(out, uint64(len(data)))
	return append(out, data...)
}

func TestReadManifest(t *testing.T) {
	t.Parallel()
	body := func(mt, data string, end byte) []byte {
		out := binary.AppendUvarint(nil, uint64(len(mt)))
		out = append(out, mt...)
		out = binary.AppendUvarint(out, uint64(len(data)))
		return append(append(out, data...), end)
	}
	for _, c := range []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"good", body("application/vnd.oci.image.manifest.v1+json", `{"schemaVersion":2}`, 'D'), true},
		{"no end", body("x", "{}", 'C'), false},
		{"cut", body("x", "{}", 'D')[:4], false},
		{"too long", binary.AppendUvarint([]byte{0}, maxManifest+1), false},
	} {
		data, mt, err := readManifest(bufio.NewReader(bytes.NewReader(c.in)))
		if c.ok && (err != nil || string(data) != `{"schemaVersion":2}` || mt != "application/vnd.oci.image.manifest.v1+json") {
			t.Errorf("%s: %q %q %v", c.name, data, mt, err)
		}
		if !c.ok && err == nil {
			t.Errorf("%s: accepted", c.name)
		}
	}
}

func TestReadChunk(t *testing.T) {
	t.Parallel()
	data := []byte("a chunk of a registry blob")
	b, err := chunk.Sum(data, chunk.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	tampered := append([]byte(nil), data...)
	tampered[0] ^= 1
	for _, c := range []struct {
		name string
		in   []byte
		want error // nil: the chunk comes back
	}{
		{"good", frameBody(b.CID().Bytes(), data), nil},
		{"tampered", frameBody(b.CID().Bytes(), tampered), chunk.ErrHashMismatch},
		{"bad id", frameBody([]byte("not a cid"), data), errProtocol},
		{"too long", binary.AppendUvarint(frameBody(b.CID().Bytes(), nil)[:1+len(b.CID().Bytes())], chunk.MaxChunkSize+1), errProtocol},
	} {
		got, err := readChunk(bufio.NewReader(bytes.NewReader(c.in)))
		if c.want == nil && (err != nil || !bytes.Equal(got.Data(), data)) {
			t.Errorf("%s: %v", c.name, err)
		}
		if c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
}

// Bytes from the network never crash the decoders, and what readChunk
// returns always matches its id.
func FuzzDecode(f *testing.F) {
	b, _ := chunk.Sum([]byte("seed"), chunk.SHA256)
	f.Add(frameBody(b.CID().Bytes(), []byte("seed")))
	f.Add([]byte{0x10, '{', '"', 'd', 'i', 'g', 'e', 's', 't', '"', ':', '"', 'x', '"', '}'})
	f.Fuzz(func(t *testing.T, in []byte) {
		if got, err := readChunk(bufio.NewReader(bytes.NewReader(in))); err == nil {
			if _, err := chunk.Verify(got.CID(), got.Data()); err != nil {
				t.Fatalf("readChunk returned a chunk that does not match its id: %v", err)
			}
		}
		if ask, err := readAsk(bufio.NewReader(bytes.NewReader(in))); err == nil && ask.Mode > 2 {
			t.Fatalf("readAsk accepted mode %d", ask.Mode)
		}
		if data, mt, err := readManifest(bufio.NewReader(bytes.NewReader(in))); err == nil && (len(data) > maxManifest || len(mt) > 4<<10) {
			t.Fatalf("readManifest returned %d bytes of manifest, %d of media type", len(data), len(mt))
		}
	})
}
