package client

import (
	"context"
	"net/http"

	"github.com/p2pimg/p2pimg/node/api"
)

// Fleet is the whole cluster as the daemon sees it (the web view's data).
func (c *Client) Fleet(ctx context.Context) (api.Fleet, error) {
	var f api.Fleet
	return f, c.call(ctx, http.MethodGet, "/fleet", nil, &f)
}

// Doctor has the daemon probe its peers and keepers (p2pimg doctor).
func (c *Client) Doctor(ctx context.Context) (api.Doctor, error) {
	var d api.Doctor
	return d, c.call(ctx, http.MethodGet, "/doctor", nil, &d)
}
