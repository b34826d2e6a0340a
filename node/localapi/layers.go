package localapi

import (
	"context"
	"net/http"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
)

// layerAPI is this host's own layer work.
type layerAPI interface {
	Layers(ctx context.Context) ([]chunk.Layer, error)
	Remove(ctx context.Context, ref string) error
	GC(ctx context.Context) (*api.GCResult, error)
	Common(ctx context.Context, refs []string) (*api.CommonResult, error)
	Stats(ctx context.Context) (*api.Stats, error)
	Add(ctx context.Context, req api.AddRequest, emit api.Emit) (*api.AddResult, error)
	Checkout(ctx context.Context, req api.CheckoutRequest, emit api.Emit) (*api.CheckoutResult, error)
	Verify(ctx context.Context, emit api.Emit) (*api.VerifyResult, error)
	Commit(ctx context.Context, req api.CommitRequest, emit api.Emit) (*api.AddResult, error)
	Split(ctx context.Context, req api.SplitRequest) (*api.SplitResult, error)
	Rebase(ctx context.Context, req api.RebaseRequest) (*chunk.Layer, error)
	Import(ctx context.Context, req api.ImportRequest, emit api.Emit) (*api.ImportResult, error)
}

func (s *Server) layerRoutes() []route {
	v := api.Version
	return []route{
		{"GET " + v + "/layers", s.plain(func(ctx context.Context, n Node, _ *http.Request) (any, error) {
			return n.Layers(ctx)
		})},
		{"DELETE " + v + "/layers/{name...}", s.plain(func(ctx context.Context, n Node, r *http.Request) (any, error) {
			return struct{}{}, n.Remove(ctx, r.PathValue("name"))
		})},
		{"POST " + v + "/gc", s.need(api.RightGC, "gc", s.plain(func(ctx context.Context, n Node, _ *http.Request) (any, error) {
			return n.GC(ctx)
		}))},
		{"GET " + v + "/common", s.plain(func(ctx context.Context, n Node, r *http.Request) (any, error) {
			return n.Common(ctx, r.URL.Query()["layer"])
		})},
		{"GET " + v + "/stats", s.plain(func(ctx context.Context, n Node, _ *http.Request) (any, error) {
			return n.Stats(ctx)
		})},
		{"POST " + v + "/layers", s.stream(streamBody(func(ctx context.Context, n Node, req api.AddRequest, emit api.Emit) (any, error) {
			if req.Policy != "" {
				if err := s.allow(ctx, "add --policy", api.RightPolicy); err != nil {
					return nil, err
				}
			}
			return n.Add(ctx, req, emit)
		}))},
		{"POST " + v + "/checkout", s.stream(streamBody(func(ctx context.Context, n Node, req api.CheckoutRequest, emit api.Emit) (any, error) {
			return n.Checkout(ctx, req, emit)
		}))},
		{"POST " + v + "/verify", s.stream(func(ctx context.Context, n Node, _ *http.Request, emit api.Emit) (any, error) {
			return n.Verify(ctx, emit)
		})},
		{"POST " + v + "/commit", s.stream(streamBody(func(ctx context.Context, n Node, req api.CommitRequest, emit api.Emit) (any, error) {
			// An activation's changes were written by whoever uses its
			// path, often root: publishing them is the activator's right.
			if req.Activation != "" {
				if err := s.allow(ctx, "commit --activation", api.RightActivate); err != nil {
					return nil, err
				}
			}
			return n.Commit(ctx, req, emit)
		}))},
		{"POST " + v + "/split", s.plain(body(func(ctx context.Context, n Node, req api.SplitRequest) (any, error) {
			return n.Split(ctx, req)
		}))},
		{"POST " + v + "/rebase", s.plain(body(func(ctx context.Context, n Node, req api.RebaseRequest) (any, error) {
			l, err := n.Rebase(ctx, req)
			if err != nil {
				return nil, err
			}
			return api.WireLayer(*l), nil
		}))},
		{"POST " + v + "/import", s.stream(streamBody(func(ctx context.Context, n Node, req api.ImportRequest, emit api.Emit) (any, error) {
			return n.Import(ctx, req, emit)
		}))},
	}
}
