package fetch

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/node/xchg"
)

// quickManifestTimeout bounds a manifest request to a peer that has
// claimed layers it then did not serve.
const quickManifestTimeout = 2 * time.Second

// errBadLength: an item whose length is not the chunk's.
var errBadLength = fmt.Errorf("%w: item length is not the chunk's size", xchg.ErrProtocol)

// streamEnded books how a worker's stream to p ended: a protocol
// violation counts against p (and may block it); any other failure counts
// toward stopping new streams to p for a while.
func (fr *Fetcher) streamEnded(p peer.ID, err error) {
	c := fr.cfg.Conduct
	if c == nil || err == nil {
		return
	}
	if errors.Is(err, xchg.ErrProtocol) {
		c.Violation(p, "fetch", err)
	}
	c.StreamFailed(p)
}

// mayOpen reports whether a new stream to p may be opened now.
func (fr *Fetcher) mayOpen(p peer.ID) bool {
	return fr.cfg.Conduct == nil || fr.cfg.Conduct.MayOpen(p)
}

// worked notes that a stream to p delivered chunks.
func (fr *Fetcher) worked(p peer.ID) {
	if fr.cfg.Conduct != nil {
		fr.cfg.Conduct.StreamWorked(p)
	}
}

// byMisses orders peers by how often they claimed layers and did not
// serve them, fewest first (a stable sort: holders stay ahead of others).
func (fr *Fetcher) byMisses(ps []peer.ID) []peer.ID {
	if fr.cfg.Conduct == nil {
		return ps
	}
	slices.SortStableFunc(ps, func(a, b peer.ID) int { return fr.cfg.Conduct.Misses(a) - fr.cfg.Conduct.Misses(b) })
	return ps
}

// manifestTimeout is how long to wait for p's manifest answer.
func (fr *Fetcher) manifestTimeout(p peer.ID) time.Duration {
	if fr.cfg.Conduct != nil && fr.cfg.Conduct.Misses(p) > 0 {
		return quickManifestTimeout
	}
	return readTimeout
}

// claimed books whether p, which the catalogue says holds layer id,
// served its manifest.
func (fr *Fetcher) claimed(p peer.ID, id cid.Cid, served bool) {
	if fr.cfg.Conduct == nil || !slices.Contains(fr.cfg.Catalog.HoldersOf(id.String()), p) {
		return
	}
	if served {
		fr.cfg.Conduct.Served(p)
	} else {
		fr.cfg.Conduct.Missed(p)
	}
}
