package testnet_test

import (
	"archive/tar"
	"os"
	"path/filepath"
	"testing"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/testnet"
)

// An image saved with a registry host and port in its reference
// (127.0.0.1:5055/demo/app:2) imports under that name.
func TestImportRefWithRegistryPort(t *testing.T) {
	net := testnet.New(t, 1)
	n0 := net.Nodes[0]
	l1 := tarOf(t, []tarEntry{{name: "etc/", typ: tar.TypeDir}, {name: "etc/a", body: "a", typ: tar.TypeReg}}, false)
	archive := dockerSaveTagged(t, "127.0.0.1:5055/demo/app:2", nil, l1)
	p := filepath.Join(t.TempDir(), "save.tar")
	os.WriteFile(p, archive, 0o644)
	r, err := n0.Client.Import(ctx, api.ImportRequest{Path: p}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Layers) != 1 || r.Layers[0].Name != "127.0.0.1:5055/demo/app:2" {
		t.Fatalf("layers: %+v", r.Layers)
	}
}
