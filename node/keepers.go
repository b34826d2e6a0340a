package node

import (
	"context"

	"github.com/p2pimg/p2pimg/node/api"
)

// Keepers lists the keepers of the seat table.
func (n *Node) Keepers(ctx context.Context) (*api.KeeperList, error) { return n.seats.Keepers(ctx) }

// ChangeKeepers passes an operator's signed keeper change to the leader.
func (n *Node) ChangeKeepers(ctx context.Context, signed []byte) (*api.KeeperList, error) {
	return n.seats.ChangeKeepers(ctx, signed)
}
