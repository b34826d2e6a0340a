package testnet_test

import (
	"bytes"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/crane"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/p2pimg/p2pimg/node/api"
)

// A multi-platform image (an index of two platforms' manifests) imported
// from an OCI layout on A is pulled by tag through B's mirror for either
// platform, every digest matching; the tag serves the index's own bytes.
func TestRegistryImportedIndex(t *testing.T) {
	net := mirrorNet(t, 2, nil)
	a, b := net.Nodes[0], net.Nodes[1]
	other := "arm64"
	if runtime.GOARCH == other {
		other = "amd64"
	}
	plats := []*v1.Platform{{OS: "linux", Architecture: runtime.GOARCH}, {OS: "linux", Architecture: other}}
	idx := v1.ImageIndex(empty.Index)
	var imgs []v1.Image
	for _, p := range plats {
		img, err := random.Image(256<<10, 2)
		if err != nil {
			t.Fatal(err)
		}
		imgs = append(imgs, img)
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: p}})
	}
	dir := t.TempDir()
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendIndex(idx, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "demo/multi:1"})); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Client.Import(ctx, api.ImportRequest{Path: dir}, nil); err != nil {
		t.Fatal(err)
	}
	net.Eventually(20*time.Second, "B's catalogue maps demo/multi:1", func() bool {
		c, err := b.Client.Resolve(ctx, "oci/ref/demo/multi:1")
		return err == nil && c != ""
	})
	rawIdx, _ := idx.RawManifest()
	if resp, body := get(t, "http://"+mirrorAddr(b)+"/v2/demo/multi/manifests/1"); resp.StatusCode != 200 || !bytes.Equal(body, rawIdx) {
		t.Fatalf("the tag through B: %s, %d bytes; want the index's %d", resp.Status, len(body), len(rawIdx))
	}
	for k, p := range plats {
		if err := pullPlatform(mirrorAddr(b)+"/demo/multi:1", p, imageDigest(t, imgs[k])); err != nil {
			t.Fatalf("%s/%s through B: %v", p.OS, p.Architecture, err)
		}
	}
}

// pullPlatform pulls ref for platform p and reads every layer (crane
// checks each against its digest); the manifest's digest must be want.
func pullPlatform(ref string, p *v1.Platform, want v1.Hash) error {
	got, err := pullAll(ref, clientTransport, crane.WithPlatform(p))
	if err == nil && got != want {
		err = fmt.Errorf("manifest %s, want %s", got, want)
	}
	return err
}
