package node

import (
	"context"
	"errors"
	"fmt"

	"github.com/p2pimg/p2pimg/node/api"
)

// ErrNoReload is returned when the node was built without a way to read
// its cluster files again (no Config.ReloadCluster).
var ErrNoReload = errors.New("this daemon has no cluster files to reload")

// ReloadCluster reads the cluster files again (Config.ReloadCluster) and
// applies their members, publishers, operators and grants: the gater
// admits new connections by the new members list at once, and the
// connections of peers no longer members are closed. A change the running
// host cannot take (name, psk, keepers, issuers, seat rules) is refused
// whole and the old config stays.
func (n *Node) ReloadCluster(ctx context.Context) (*api.ClusterReload, error) {
	if n.cfg.ReloadCluster == nil {
		return nil, ErrNoReload
	}
	n.reloadMu.Lock()
	defer n.reloadMu.Unlock()
	next, err := n.cfg.ReloadCluster()
	if err != nil {
		return nil, fmt.Errorf("cluster reload: %w; the old config stays", err)
	}
	if err := n.cfg.Cluster.Apply(next); err != nil {
		return nil, fmt.Errorf("cluster reload: %w", err)
	}
	out := &api.ClusterReload{Members: len(n.cfg.Cluster.MemberIDs()), Disconnected: []string{}}
	nw := n.net.Host.Network()
	for _, p := range nw.Peers() {
		if n.cfg.Cluster.IsMember(p) {
			continue
		}
		if err := nw.ClosePeer(p); err != nil {
			n.cfg.Log.Warn("cluster reload: closing a peer no longer a member", "peer", p.String(), "err", err)
		}
		out.Disconnected = append(out.Disconnected, p.String())
	}
	n.cfg.Log.Info("cluster reloaded", "members", out.Members, "disconnected", len(out.Disconnected))
	return out, nil
}
