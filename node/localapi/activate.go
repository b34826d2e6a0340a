package localapi

import (
	"context"
	"net/http"

	"github.com/p2pimg/p2pimg/node/api"
)

// activateAPI publishes activations and reports their states.
type activateAPI interface {
	Activate(ctx context.Context, req api.ActivateRequest) (*api.ActivateResult, error)
	Activations() []api.HostActivation
	ResolveLayer(ctx context.Context, name string) (string, error)
}

func (s *Server) activateRoutes() []route {
	v := api.Version
	return []route{
		{"POST " + v + "/activate", s.plain(body(func(ctx context.Context, n Node, req api.ActivateRequest) (any, error) {
			return n.Activate(ctx, req)
		}))},
		{"GET " + v + "/activations", s.plain(func(ctx context.Context, n Node, _ *http.Request) (any, error) {
			return n.Activations(), nil
		})},
		{"GET " + v + "/resolve/{name...}", s.plain(func(ctx context.Context, n Node, r *http.Request) (any, error) {
			id, err := n.ResolveLayer(ctx, r.PathValue("name"))
			return map[string]string{"cid": id}, err
		})},
	}
}
