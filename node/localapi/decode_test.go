package localapi

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"testing"

	"github.com/p2pimg/p2pimg/node/api"
)

// FuzzAPIJSON feeds arbitrary bodies to the request decoder of every API
// request type: it must refuse or decode, never panic.
func FuzzAPIJSON(f *testing.F) {
	for _, v := range []any{api.AddRequest{Name: "a:1", Path: "/x"}, api.ActivateRequest{Layer: "a:1"}, api.ClaimRequest{Product: "p", Consumer: "c"}, api.ImportRequest{Path: "/x"}} {
		b, _ := json.Marshal(v)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, v := range []any{&api.AddRequest{}, &api.CheckoutRequest{}, &api.ActivateRequest{}, &api.FetchRequest{},
			&api.ClaimRequest{}, &api.ReleaseRequest{}, &api.LicenseInstallRequest{}, &api.PolicyRequest{},
			&api.CommitRequest{}, &api.SplitRequest{}, &api.RebaseRequest{}, &api.ImportRequest{}, &api.PartitionRequest{}} {
			Decode(httptest.NewRequest("POST", "/", bytes.NewReader(data)), v)
		}
	})
}
