package node

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/p2p"
	"github.com/p2pimg/p2pimg/policy"
)

// The local API's calls, forwarded to the services that own them.

// Layers lists this host's layers.
func (n *Node) Layers(ctx context.Context) ([]chunk.Layer, error) { return n.layers.Layers(ctx) }

// Remove forgets NAME:TAG; its chunks go at the next gc unless another layer uses them.
func (n *Node) Remove(ctx context.Context, ref string) error { return n.layers.Remove(ctx, ref) }

// GC removes chunks and manifests that no kept layer references.
func (n *Node) GC(ctx context.Context) (*api.GCResult, error) { return n.layers.GC(ctx) }

// Common compares this host's layers: identical files and shared chunks.
func (n *Node) Common(ctx context.Context, refs []string) (*api.CommonResult, error) {
	return n.layers.Common(ctx, refs)
}

// Stats summarises the store.
func (n *Node) Stats(ctx context.Context) (*api.Stats, error) { return n.layers.Stats(ctx) }

// Add builds a layer from a local path and publishes it as NAME:TAG.
func (n *Node) Add(ctx context.Context, req api.AddRequest, emit api.Emit) (*api.AddResult, error) {
	return n.layers.Add(ctx, req, emit)
}

// Checkout writes a complete layer into a local directory.
func (n *Node) Checkout(ctx context.Context, req api.CheckoutRequest, emit api.Emit) (*api.CheckoutResult, error) {
	return n.layers.Checkout(ctx, req, emit)
}

// Verify re-hashes every stored chunk and drops the corrupt ones.
func (n *Node) Verify(ctx context.Context, emit api.Emit) (*api.VerifyResult, error) {
	return n.layers.Verify(ctx, emit)
}

// Commit captures an overlayfs upper directory as a layer on a base.
func (n *Node) Commit(ctx context.Context, req api.CommitRequest, emit api.Emit) (*api.AddResult, error) {
	return n.layers.Commit(ctx, req, emit)
}

// Split makes a common base layer of several layers.
func (n *Node) Split(ctx context.Context, req api.SplitRequest) (*api.SplitResult, error) {
	return n.layers.Split(ctx, req)
}

// Rebase re-points a thin layer at a new version of its base.
func (n *Node) Rebase(ctx context.Context, req api.RebaseRequest) (*chunk.Layer, error) {
	return n.layers.Rebase(ctx, req)
}

// Import publishes a container image as a stack of layers.
func (n *Node) Import(ctx context.Context, req api.ImportRequest, emit api.Emit) (*api.ImportResult, error) {
	return n.layers.Import(ctx, req, emit)
}

// Fetch makes NAME:TAG complete on this host, as the cluster catalogue maps it.
func (n *Node) Fetch(ctx context.Context, ref string, emit api.Emit) (*api.FetchResult, error) {
	return n.fetch.FetchName(ctx, ref, emit)
}

// Activate publishes an activation.
func (n *Node) Activate(ctx context.Context, req api.ActivateRequest) (*api.ActivateResult, error) {
	return n.act.Activate(ctx, req)
}

// ResolveLayer is the manifest CID a layer name stands for.
func (n *Node) ResolveLayer(ctx context.Context, name string) (string, error) {
	return n.act.ResolveLayer(ctx, name)
}

// InstallLicense has the keepers install a licence.
func (n *Node) InstallLicense(ctx context.Context, text string) (*api.LicenseInfo, error) {
	return n.seats.InstallLicense(ctx, text)
}

// Claim asks the keepers for a seat.
func (n *Node) Claim(ctx context.Context, req api.ClaimRequest) (*api.Grant, error) {
	return n.seats.Claim(ctx, req)
}

// Release gives a seat back.
func (n *Node) Release(ctx context.Context, req api.ReleaseRequest) (*api.ReleaseResult, error) {
	return n.seats.Release(ctx, req)
}

// Check reports whether a grant is current.
func (n *Node) Check(ctx context.Context, token uint64) (*api.CheckResult, error) {
	return n.seats.Check(ctx, token)
}

// Licenses is the seat table as this host knows it.
func (n *Node) Licenses(ctx context.Context) (*api.LicenseList, error) {
	l, err := n.seats.Licenses(ctx)
	if l != nil { // lists are [] in JSON, never null
		l.Licenses, l.Holders, l.Held = nonNil(l.Licenses), nonNil(l.Holders), nonNil(l.Held)
	}
	return l, err
}

// SetHostPolicy replaces this host's policy.
func (n *Node) SetHostPolicy(ctx context.Context, text string) (*policy.Host, error) {
	return n.policy.SetHostPolicy(ctx, text)
}

// SetLayerPolicy publishes a layer again with a new layer policy.
func (n *Node) SetLayerPolicy(ctx context.Context, name, text string) (*api.ClusterLayer, error) {
	return n.policy.SetLayerPolicy(ctx, name, text)
}

// PolicyShow is the effective policy of a layer on a host.
func (n *Node) PolicyShow(ctx context.Context, name, host string) (*api.PolicyResult, error) {
	return n.policy.PolicyShow(ctx, name, host)
}

// PolicyCheck lists every host and layer pair that conflicts.
func (n *Node) PolicyCheck(ctx context.Context) []api.PolicyResult { return n.policy.PolicyCheck(ctx) }

// Identity is this node's peer id and addresses.
func (n *Node) Identity() api.Identity {
	protos := []string{}
	for _, p := range n.net.Host.Mux().Protocols() {
		if strings.HasPrefix(string(p), "/p2pimg/") {
			protos = append(protos, string(p))
		}
	}
	slices.Sort(protos)
	return api.Identity{PeerID: n.ID().String(), Addrs: n.Addrs(), Cluster: n.cfg.Cluster.Name, Open: n.cfg.Cluster.Open(), Protocols: protos}
}

// Peers lists the connected peers.
func (n *Node) Peers() []api.Peer { return p2p.Peers(n.net.Host, n.net.Stats) }

// Catalog is the cluster's view of every layer, with who holds it.
func (n *Node) Catalog(ctx context.Context) []api.ClusterLayer {
	out := []api.ClusterLayer{}
	local := map[string]bool{}
	if ls, err := n.db.Layers(ctx); err == nil {
		for _, l := range ls {
			if l.State == chunk.Complete {
				local[l.CID] = true
			} else if _, ok := local[l.CID]; !ok {
				local[l.CID] = false
			}
		}
	}
	state := func(complete bool) string {
		if complete {
			return "complete"
		}
		return "partial"
	}
	now := time.Now()
	for _, m := range n.catalog.All() {
		cl := api.ClusterLayer{Name: m.Name, CID: m.CID, Size: m.Size, Publisher: m.Publisher, Product: m.Product,
			Published: time.Unix(0, m.Published).UTC(), Holders: map[string]string{}}
		for p, complete := range n.catalog.Holdings(m.CID) {
			cl.Holders[p.String()] = state(complete)
			if r, _ := n.gossip.Reach(p, now); r == api.ReachUnreachable || r == api.ReachGone {
				cl.Unreachable = append(cl.Unreachable, p.String())
			}
		}
		slices.Sort(cl.Unreachable)
		if complete, ok := local[m.CID]; ok {
			cl.Holders[n.ID().String()] = state(complete)
		}
		out = append(out, cl)
	}
	return out
}

// Partition cuts this host off from the given peers (and only them): open
// connections close and new ones are refused until the next Partition.
// An empty list heals. It is how a testnet partitions hosts on loopback.
func (n *Node) Partition(ids []string) error {
	var ps []peer.ID
	for _, s := range ids {
		p, err := peer.Decode(s)
		if err != nil {
			return api.BadRequestf("partition: %q is not a peer id", s)
		}
		ps = append(ps, p)
	}
	n.net.Gater.Partition(ps)
	for _, p := range ps {
		n.net.Host.Network().ClosePeer(p)
		n.catalog.Forget(p)
	}
	n.cfg.Log.Info("partition set", "cut_off", len(ps))
	return nil
}

// Forget drops what a host said of itself (holdings, states, labels,
// policy) from this host's catalogue, and keeps its older records out: for
// a host that is gone for good. Mappings and activations it signed stay.
func (n *Node) Forget(ctx context.Context, host string) error {
	p, err := peer.Decode(host)
	if err != nil {
		return api.BadRequestf("forget: %q is not a peer id (see `p2pimg status`)", host)
	}
	if p == n.ID() {
		return api.BadRequestf("forget: %s is this host", host)
	}
	if r, _ := n.gossip.Reach(p, time.Now()); r == api.ReachUp {
		return api.Conflictf("forget: %s is still heard from; stop it first (it would come back at its next change)", host)
	}
	n.catalog.Drop(p, time.Now())
	n.cfg.Log.Info("host forgotten", "peer", host)
	return nil
}
