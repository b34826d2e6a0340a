package localapi

import (
	"context"
	"encoding/json"
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
			if err := s.allow(ctx, string(activationOp(req)), activationRights(req)...); err != nil {
				return nil, err
			}
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

// activationOp is what an activation request does (for messages).
func activationOp(req api.ActivateRequest) api.Op {
	if len(req.Signed) > 0 {
		var a struct {
			Op api.Op `json:"op"`
		}
		json.Unmarshal(req.Signed, &a)
		return a.Op
	}
	return req.Op
}

// activationRights are the rights an activation needs: activate, and map
// when it redirects host paths. A signed activation's maps are inside it.
func activationRights(req api.ActivateRequest) []api.Right {
	maps := req.Maps
	if len(req.Signed) > 0 {
		var a struct {
			Maps []string `json:"maps"`
		}
		json.Unmarshal(req.Signed, &a)
		maps = a.Maps
	}
	if len(maps) > 0 {
		return []api.Right{api.RightActivate, api.RightMap}
	}
	return []api.Right{api.RightActivate}
}
