package localapi

import (
	"context"
	"net/http"

	"github.com/p2pimg/p2pimg/node/api"
)

// clusterAPI is this host's view of the cluster and its fetches.
type clusterAPI interface {
	Identity() api.Identity
	Peers() []api.Peer
	Catalog(ctx context.Context) []api.ClusterLayer
	Partition(ids []string) error
	Fetch(ctx context.Context, ref string, emit api.Emit) (*api.FetchResult, error)
	Forget(ctx context.Context, host string) error
	ReloadCluster(ctx context.Context) (*api.ClusterReload, error)
	// Doctor probes the connected peers and the keepers (a few seconds at
	// most) and lists members never seen, hosts refused, peers unreachable.
	Doctor(ctx context.Context) (*api.Doctor, error)
}

func (s *Server) clusterRoutes() []route {
	v := api.Version
	return []route{
		{"GET " + v + "/id", s.plain(func(ctx context.Context, n Node, _ *http.Request) (any, error) {
			return n.Identity(), nil
		})},
		{"GET " + v + "/peers", s.plain(func(ctx context.Context, n Node, _ *http.Request) (any, error) {
			return n.Peers(), nil
		})},
		{"GET " + v + "/doctor", s.plain(func(ctx context.Context, n Node, _ *http.Request) (any, error) {
			return n.Doctor(ctx)
		})},
		{"GET " + v + "/catalog", s.plain(func(ctx context.Context, n Node, _ *http.Request) (any, error) {
			return n.Catalog(ctx), nil
		})},
		{"POST " + v + "/partition", s.need(api.RightCluster, "partition", s.plain(body(func(ctx context.Context, n Node, req api.PartitionRequest) (any, error) {
			return struct{}{}, n.Partition(req.Peers)
		})))},
		{"POST " + v + "/cluster/forget", s.need(api.RightCluster, "cluster forget", s.plain(body(func(ctx context.Context, n Node, req api.ForgetRequest) (any, error) {
			return struct{}{}, n.Forget(ctx, req.Peer)
		})))},
		{"POST " + v + "/cluster/reload", s.need(api.RightCluster, "cluster reload", s.plain(func(ctx context.Context, n Node, _ *http.Request) (any, error) {
			return n.ReloadCluster(ctx)
		}))},
		{"POST " + v + "/fetch", s.stream(streamBody(func(ctx context.Context, n Node, req api.FetchRequest, emit api.Emit) (any, error) {
			return n.Fetch(ctx, req.Name, emit)
		}))},
	}
}
