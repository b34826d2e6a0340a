package client

import (
	"context"
	"net/http"

	"github.com/p2pimg/p2pimg/node/api"
)

// Keepers lists the keepers: the Raft configuration and the cluster file's.
func (c *Client) Keepers(ctx context.Context) (api.KeeperList, error) {
	var r api.KeeperList
	return r, c.call(ctx, http.MethodGet, "/license/keepers", nil, &r)
}

// ChangeKeepers has the keepers' leader apply an operator's signed keeper
// change (JSON); it returns the keepers after it.
func (c *Client) ChangeKeepers(ctx context.Context, signed []byte) (api.KeeperList, error) {
	var r api.KeeperList
	return r, c.call(ctx, http.MethodPost, "/license/keepers", api.KeeperChangeRequest{Signed: signed}, &r)
}
