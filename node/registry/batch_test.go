package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/badgerstore/badgertest"
)

// A source that sends more than the size it announced, or fewer bytes
// than it, is treated as one that sent the wrong blob (errDigest: the
// blob is then fetched from upstream), and nothing is published.
func TestBatchSizeLies(t *testing.T) {
	ctx := context.Background()
	s := &Service{cfg: Config{Store: badgertest.Open(t)}, params: chunk.DefaultParams()}
	data := []byte("the blob's bytes, all of them")
	sum := sha256.Sum256(data)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	block, err := chunk.Sum(data, s.params.Hash)
	if err != nil {
		t.Fatal(err)
	}

	over := s.newBatch(ctx, digest, int64(len(data))-1, nil)
	if err := over.add(block, true); !errors.Is(err, errDigest) {
		t.Fatalf("more than announced: %v, want errDigest", err)
	}
	under := s.newBatch(ctx, digest, int64(len(data))+1, nil)
	if err := under.add(block, true); err != nil {
		t.Fatal(err)
	}
	if _, err := under.commit(""); !errors.Is(err, errDigest) {
		t.Fatalf("fewer than announced: %v, want errDigest", err)
	}
}
