package localapi

import (
	"context"
	"net/http"
	"strconv"

	"github.com/p2pimg/p2pimg/node/api"
)

// seatAPI is licences and seats.
type seatAPI interface {
	InstallLicense(ctx context.Context, text string) (*api.LicenseInfo, error)
	Claim(ctx context.Context, req api.ClaimRequest) (*api.Grant, error)
	Release(ctx context.Context, req api.ReleaseRequest) (*api.ReleaseResult, error)
	Check(ctx context.Context, token uint64) (*api.CheckResult, error)
	Licenses(ctx context.Context) (*api.LicenseList, error)
	// Keepers and ChangeKeepers: who keeps the seat table, and an
	// operator's signed change of it.
	Keepers(ctx context.Context) (*api.KeeperList, error)
	ChangeKeepers(ctx context.Context, signed []byte) (*api.KeeperList, error)
}

func (s *Server) seatRoutes() []route {
	v := api.Version
	return []route{
		{"POST " + v + "/license/install", s.need(api.RightLicense, "license install", s.plain(body(func(ctx context.Context, n Node, req api.LicenseInstallRequest) (any, error) {
			return n.InstallLicense(ctx, req.License)
		})))},
		{"POST " + v + "/license/claim", s.plain(body(func(ctx context.Context, n Node, req api.ClaimRequest) (any, error) {
			return n.Claim(ctx, req)
		}))},
		{"POST " + v + "/license/release", s.plain(body(func(ctx context.Context, n Node, req api.ReleaseRequest) (any, error) {
			return n.Release(ctx, req)
		}))},
		{"GET " + v + "/license/check", s.plain(func(ctx context.Context, n Node, r *http.Request) (any, error) {
			tok, err := strconv.ParseUint(r.URL.Query().Get("token"), 10, 64)
			if err != nil || tok == 0 {
				return nil, api.BadRequestf("check: token %q is not a grant token (a positive number from `p2pimg license claim`)", r.URL.Query().Get("token"))
			}
			return n.Check(ctx, tok)
		})},
		{"GET " + v + "/license", s.plain(func(ctx context.Context, n Node, _ *http.Request) (any, error) {
			return n.Licenses(ctx)
		})},
		{"GET " + v + "/license/keepers", s.plain(func(ctx context.Context, n Node, _ *http.Request) (any, error) {
			return n.Keepers(ctx)
		})},
		{"POST " + v + "/license/keepers", s.plain(body(func(ctx context.Context, n Node, req api.KeeperChangeRequest) (any, error) {
			return n.ChangeKeepers(ctx, req.Signed)
		}))},
	}
}
