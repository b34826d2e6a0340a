package fuseview

import (
	"context"
	"os"

	"github.com/ipfs/go-cid"

	"github.com/p2pimg/p2pimg/chunk"
)

// Works mounts an empty view in a scratch directory under dir and takes
// it away again: the only sure way to know this host may serve FUSE.
func Works(dir string) error {
	tmp, err := os.MkdirTemp(dir, ".fuse-probe-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	v, err := Mount(tmp, &chunk.Manifest{Params: chunk.DefaultParams()}, Config{Store: noChunks{}, Name: "p2pimg-probe"})
	if err != nil {
		return err
	}
	return v.Unmount()
}

type noChunks struct{}

func (noChunks) GetInto(context.Context, cid.Cid, []byte) ([]byte, error) {
	return nil, chunk.ErrNotFound
}
