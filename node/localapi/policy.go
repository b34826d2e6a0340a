package localapi

import (
	"context"
	"net/http"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/policy"
)

// policyAPI is host and layer policies and the diff of exposed views.
type policyAPI interface {
	SetHostPolicy(ctx context.Context, text string) (*policy.Host, error)
	SetLayerPolicy(ctx context.Context, name, text string) (*api.ClusterLayer, error)
	PolicyShow(ctx context.Context, name, host string) (*api.PolicyResult, error)
	PolicyCheck(ctx context.Context) []api.PolicyResult
	Diff(ctx context.Context, name, host string) (*api.DiffResult, error)
}

func (s *Server) policyRoutes() []route {
	v := api.Version
	return []route{
		{"POST " + v + "/policy/host", s.need(api.RightPolicy, "policy set-host", s.plain(body(func(ctx context.Context, n Node, req api.PolicyRequest) (any, error) {
			return n.SetHostPolicy(ctx, req.Policy)
		})))},
		{"POST " + v + "/policy/layer", s.need(api.RightPolicy, "policy set-layer", s.plain(body(func(ctx context.Context, n Node, req api.PolicyRequest) (any, error) {
			return n.SetLayerPolicy(ctx, req.Name, req.Policy)
		})))},
		{"GET " + v + "/policy/show", s.plain(func(ctx context.Context, n Node, r *http.Request) (any, error) {
			return n.PolicyShow(ctx, r.URL.Query().Get("name"), r.URL.Query().Get("host"))
		})},
		{"GET " + v + "/policy/check", s.plain(func(ctx context.Context, n Node, _ *http.Request) (any, error) {
			return n.PolicyCheck(ctx), nil
		})},
		{"GET " + v + "/diff/{name...}", s.plain(func(ctx context.Context, n Node, r *http.Request) (any, error) {
			return n.Diff(ctx, r.PathValue("name"), r.URL.Query().Get("host"))
		})},
	}
}
