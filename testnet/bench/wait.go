package main

import (
	"context"
	"fmt"
	"time"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
)

// catalogue is what waitLayer polls: a daemon's view of the cluster
// catalogue (the local API's client, in or out of a network namespace).
type catalogue interface {
	Catalog(ctx context.Context) ([]api.ClusterLayer, error)
}

// layerWait is how long a part waits for a layer to reach another host's
// catalogue before it gives up (announcements go out every 200 ms to 1 s).
const layerWait = 20 * time.Second

// waitLayer returns when the catalogue of cl maps the layer name to cid
// (any CID when cid is empty) with holder among its holders as complete
// (when holder is not empty), or with an error after layerWait. The parts
// wait for the very layer they are about to use, not for a count of
// entries: the count says nothing about which layers have arrived.
func waitLayer(ctx context.Context, cl catalogue, name, cid, holder string) error {
	n, err := chunk.ParseName(name)
	if err != nil {
		return err
	}
	want := n.String()
	deadline := time.Now().Add(layerWait)
	last := "no such layer"
	for {
		entries, err := cl.Catalog(ctx)
		if err != nil {
			last = err.Error()
		}
		for _, e := range entries {
			if e.Name != want {
				continue
			}
			switch {
			case cid != "" && e.CID != cid:
				last = fmt.Sprintf("mapped to %s, not %s", e.CID, cid)
			case holder != "" && e.Holders[holder] != "complete":
				last = fmt.Sprintf("%s not (yet) a complete holder", holder)
			default:
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s never reached the host's catalogue in %s (%s)", name, layerWait, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
