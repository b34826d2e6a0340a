package testnet_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/p2pimg/p2pimg/node"
	"github.com/p2pimg/p2pimg/node/faults"
	"github.com/p2pimg/p2pimg/node/registry"
	"github.com/p2pimg/p2pimg/testnet"
)

// mirrorsKnown waits until every running node counts every other as a
// live mirror.
func mirrorsKnown(t *testing.T, net *testnet.Net, running []int) {
	t.Helper()
	net.WaitConnected()
	net.Eventually(20*time.Second, "every mirror knows the others", func() bool {
		for _, i := range running {
			if len(net.Nodes[i].Node().RegistryMirrors()) < len(running)-1 {
				return false
			}
		}
		return true
	})
}

// blobDigests are an image's config and layer digests.
func blobDigests(t *testing.T, img v1.Image) []string {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	out := []string{m.Config.Digest.String()}
	for _, l := range m.Layers {
		out = append(out, l.Digest.String())
	}
	return out
}

// pullEach has nodes pull ref through their own mirrors at once and
// checks the image's digest each time.
func pullEach(t *testing.T, net *testnet.Net, nodes []int, ref string, want v1.Hash) {
	t.Helper()
	errs := make(chan error, len(nodes))
	for _, i := range nodes {
		go func() {
			got, err := pullAll(mirrorAddr(net.Nodes[i])+"/"+ref, nsTransport(upstreamNS))
			if err == nil && got != want {
				err = fmt.Errorf("image digest %s, want %s", got, want)
			}
			if err != nil {
				err = fmt.Errorf("node %d: %w", i, err)
			}
			errs <- err
		}()
	}
	for range nodes {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// Four hosts pull one image at once, each through its own mirror: the
// upstream's request log shows every blob and the tag's manifest asked
// for once, for the whole cluster.
func TestRegistryClusterFetchesEachBlobOnce(t *testing.T) {
	up := newUpstream(t)
	img := up.push(t, "demo/fan:1", 3<<20, 4)
	net := mirrorNet(t, 4, up)
	all := []int{0, 1, 2, 3}
	mirrorsKnown(t, net, all)
	pullEach(t, net, all, "demo/fan:1", imageDigest(t, img))
	for _, d := range append(blobDigests(t, img), "manifest 1") {
		if n := up.getsOf(d); n != 1 {
			t.Errorf("upstream was asked for %s %d times by 4 mirrors pulling at once; want once", d, n)
		}
	}
	var chosen, fromPeer, fellBack float64
	for _, nd := range net.Nodes {
		chosen += counter(t, nd, "p2pimg_registry_cluster_fetches_total", "outcome", "chosen_here")
		fromPeer += counter(t, nd, "p2pimg_registry_cluster_fetches_total", "outcome", "from_peer")
		for _, r := range []string{"unreachable", "refused", "stalled", "cut", "digest"} {
			fellBack += counter(t, nd, "p2pimg_registry_cluster_fetches_total", "outcome", "fallback_"+r)
		}
	}
	// A host that asks once another has the whole blob takes it from the
	// cluster's holders instead (not counted here).
	if n := float64(len(blobDigests(t, img))); chosen > n || fromPeer < 1 || fellBack != 0 {
		t.Errorf("cluster fetches: %v chosen here, %v from a peer, %v fell back; want at most %v, some, 0", chosen, fromPeer, fellBack, n)
	}
}

// chosenFor is the node the cluster picks to fetch blob d from upstream
// (rendezvous hashing over the running mirrors, as the registry does).
func chosenFor(net *testnet.Net, d string, running []int) int {
	best, bestW := -1, [32]byte{}
	for _, i := range running {
		w := sha256.Sum256([]byte(d + "\x00" + net.Nodes[i].Node().ID().String()))
		if best < 0 || bytes.Compare(w[:], bestW[:]) > 0 {
			best, bestW = i, w
		}
	}
	return best
}

// The host chosen to fetch a blob from upstream dies while the blob is
// half way there: the hosts streaming it from that host fetch the rest
// from upstream themselves, and their pulls complete with every digest
// matching.
func TestRegistryChosenHostDiesMidBlob(t *testing.T) {
	up := newUpstream(t)
	img := up.push(t, "demo/die:1", 8<<20, 1)
	net := mirrorNet(t, 3, up)
	all := []int{0, 1, 2}
	mirrorsKnown(t, net, all)
	ls, _ := img.Layers()
	ld, _ := ls[0].Digest()
	victim := chosenFor(net, ld.String(), all)
	others := slices.DeleteFunc(slices.Clone(all), func(i int) bool { return i == victim })
	hang := make(chan struct{})
	up.hang.Store(&hang) // the upstream stops half way through every blob over 1 MiB
	errs := make(chan error, len(others))
	for _, i := range others { // both ask at once
		go func() {
			blob := "http://" + mirrorAddr(net.Nodes[i]) + "/v2/demo/die/blobs/" + ld.String() + "?ns=" + upstreamNS
			if err := fetchBlob(blob, ld.String()); err != nil {
				errs <- fmt.Errorf("node %d: %w", i, err)
				return
			}
			errs <- nil
		}()
	}
	net.Eventually(20*time.Second, "the chosen host's upstream fetch is half way and the others follow it", func() bool {
		n := 0
		for _, i := range others {
			n += int(counter(t, net.Nodes[i], "p2pimg_registry_cluster_fetches_total", "outcome", "from_peer"))
		}
		return n == len(others) && up.getsOf(ld.String()) == 1
	})
	up.hang.Store(nil) // what is asked from now on comes whole
	net.Stop(victim)
	close(hang)
	for range others {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	var fellBack float64
	for _, i := range others {
		for _, r := range []string{"unreachable", "cut", "stalled", "refused"} {
			fellBack += counter(t, net.Nodes[i], "p2pimg_registry_cluster_fetches_total", "outcome", "fallback_"+r)
		}
	}
	if fellBack < 1 {
		t.Fatalf("no host counted a fetch from upstream after the chosen host died")
	}
	for _, i := range others {
		pullEach(t, net, []int{i}, "demo/die:1", imageDigest(t, img))
	}
}

// fetchBlob GETs a blob and checks it against digest d.
func fetchBlob(url, d string) error {
	resp, err := clientTransport.RoundTrip(must(http.NewRequestWithContext(ctx, http.MethodGet, url, nil)))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return fmt.Errorf("%s after %d bytes: %w", resp.Status, n, err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); resp.StatusCode != http.StatusOK || got != d {
		return fmt.Errorf("%s: %d bytes hashing to %s, want %s", resp.Status, n, got, d)
	}
	return nil
}

// The host chosen to fetch a blob from upstream sends chunks that do not
// match their ids: the asking host fetches the blob from upstream itself,
// and its client gets the right bytes.
func TestRegistryLyingChosenHost(t *testing.T) {
	up := newUpstream(t)
	net := testnet.New(t, 2, testnet.WithConfig(func(i int, c *node.Config) {
		c.Registry = "127.0.0.1:0"
		c.Upstreams = registry.Upstreams{}
		u := &registry.Upstream{Endpoint: up.URL}
		if err := c.Upstreams.Add(upstreamNS, u); err != nil {
			t.Fatal(err)
		}
		u.SetClient(up.Client())
		if i == 0 {
			c.Faults = &faults.Faults{CorruptServe: true}
		}
	}))
	t.Cleanup(func() { up.Close(); clientTransport.CloseIdleConnections() }) // before the testnet's leak check
	mirrorsKnown(t, net, []int{0, 1})
	var ld v1.Hash
	for k := 0; ; k++ { // an image whose layer the liar (node 0) fetches for the cluster
		img := up.push(t, fmt.Sprintf("demo/liar:%d", k), 1<<20, 1)
		ls, _ := img.Layers()
		ld, _ = ls[0].Digest()
		if chosenFor(net, ld.String(), []int{0, 1}) == 0 {
			break
		}
		if k == 30 {
			t.Fatal("no image in 30 whose layer node 0 is chosen for")
		}
	}
	blob := "http://" + mirrorAddr(net.Nodes[1]) + "/v2/demo/liar/blobs/" + ld.String() + "?ns=" + upstreamNS
	if err := fetchBlob(blob, ld.String()); err != nil {
		t.Fatal(err)
	}
	if n := counter(t, net.Nodes[1], "p2pimg_registry_cluster_fetches_total", "outcome", "fallback_digest"); n != 1 {
		t.Fatalf("node 1 counted %v fetches from upstream after bad chunks from the chosen host; want 1", n)
	}
}

// The host chosen to ask upstream for a tag relays a wrong manifest for
// it: the asker checks the relayed bytes against the digest upstream
// gives for the tag (a HEAD), gets the manifest from upstream itself, and
// its client gets the real one.
func TestRegistryLyingChosenHostTag(t *testing.T) {
	up := newUpstream(t)
	net := testnet.New(t, 2, testnet.WithConfig(func(i int, c *node.Config) {
		c.Registry = "127.0.0.1:0"
		c.Upstreams = registry.Upstreams{}
		u := &registry.Upstream{Endpoint: up.URL}
		if err := c.Upstreams.Add(upstreamNS, u); err != nil {
			t.Fatal(err)
		}
		u.SetClient(up.Client())
		if i == 0 {
			c.Faults = &faults.Faults{CorruptServe: true}
		}
	}))
	t.Cleanup(func() { up.Close(); clientTransport.CloseIdleConnections() }) // before the testnet's leak check
	mirrorsKnown(t, net, []int{0, 1})
	var tag string
	var img v1.Image
	for k := 0; ; k++ { // a tag the liar (node 0) asks upstream for, for the cluster
		tag = fmt.Sprint(k)
		if chosenFor(net, upstreamNS+"/demo/liartag:"+tag, []int{0, 1}) == 0 {
			img = up.push(t, "demo/liartag:"+tag, 1<<10, 1)
			break
		}
		if k == 60 {
			t.Fatal("no tag in 60 that node 0 is chosen for")
		}
	}
	want, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	resp, body := get(t, "http://"+mirrorAddr(net.Nodes[1])+"/v2/demo/liartag/manifests/"+tag+"?ns="+upstreamNS,
		"Accept", "application/vnd.docker.distribution.manifest.v2+json")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("manifest through node 1: %s %s", resp.Status, body)
	}
	if got := digestOfBytes(body); got != want.String() || resp.Header.Get("Docker-Content-Digest") != want.String() {
		t.Fatalf("node 1 served manifest %s (header %s) for the tag; upstream's is %s", got, resp.Header.Get("Docker-Content-Digest"), want)
	}
	if n := up.getsOf("manifest " + tag); n != 2 {
		t.Fatalf("upstream was asked for the tag's manifest %d times; want 2 (the chosen host, then node 1 after the bad answer)", n)
	}
}

// The host chosen to fetch a blob from upstream sends its first chunk to
// the host that asked, then nothing, keeping the stream open. Within the
// relay's stall bound the asker fetches the rest from upstream and its
// client gets the blob whole; when upstream then sends bad bytes, the
// client's stream is cut (an error, not a hang) and nothing is kept.
func TestRegistryStalledChosenHost(t *testing.T) {
	up := newUpstream(t)
	net := testnet.New(t, 2, testnet.WithConfig(func(i int, c *node.Config) {
		c.Registry = "127.0.0.1:0"
		c.RelayStall = 2 * time.Second
		c.Upstreams = registry.Upstreams{}
		u := &registry.Upstream{Endpoint: up.URL}
		if err := c.Upstreams.Add(upstreamNS, u); err != nil {
			t.Fatal(err)
		}
		u.SetClient(up.Client())
		if i == 0 {
			c.Faults = &faults.Faults{StallServe: true}
		}
	}))
	t.Cleanup(func() { up.Close(); clientTransport.CloseIdleConnections() }) // before the testnet's leak check
	mirrorsKnown(t, net, []int{0, 1})
	stalledLayer := func(k int) v1.Hash { // a layer of many chunks that the staller (node 0) fetches for the cluster
		for ; ; k++ {
			img := up.push(t, fmt.Sprintf("demo/stall:%d", k), 4<<20, 1)
			ls, _ := img.Layers()
			ld, _ := ls[0].Digest()
			if chosenFor(net, ld.String(), []int{0, 1}) == 0 {
				return ld
			}
			if k == 60 {
				t.Fatal("no image in 60 whose layer node 0 is chosen for")
			}
		}
	}
	get := func(ld v1.Hash) error {
		url := "http://" + mirrorAddr(net.Nodes[1]) + "/v2/demo/stall/blobs/" + ld.String() + "?ns=" + upstreamNS
		errc := make(chan error, 1)
		go func() { errc <- fetchBlob(url, ld.String()) }()
		select {
		case err := <-errc:
			return err
		case <-time.After(2 * time.Minute):
			t.Fatalf("blob %s: no answer in 2 minutes (relay stall bound 2s)", ld)
			return nil
		}
	}
	stalled := func() float64 {
		return counter(t, net.Nodes[1], "p2pimg_registry_cluster_fetches_total", "outcome", "fallback_stalled")
	}

	ld := stalledLayer(0)
	if err := get(ld); err != nil {
		t.Fatalf("the rest of a blob whose relay stalled, from upstream: %v", err)
	}
	if n := stalled(); n != 1 {
		t.Fatalf("node 1 counted %v fetches from upstream after the chosen host stalled; want 1", n)
	}
	if n := up.getsOf(ld.String()); n != 2 {
		t.Fatalf("upstream was asked for the blob %d times; want 2 (the chosen host, then the rest for the asker)", n)
	}

	ld = stalledLayer(100)
	flip := func(path string, body []byte) []byte {
		if strings.HasSuffix(path, ld.String()) && up.getsOf(ld.String()) >= 2 && len(body) > 0 {
			body = bytes.Clone(body)
			body[len(body)/2] ^= 1 // what the asker fetches itself is bad
		}
		return body
	}
	up.tamper.Store(&flip)
	if err := get(ld); err == nil {
		t.Fatal("a blob whose relay stalled and whose upstream then sent bad bytes was served whole")
	}
	if n := stalled(); n != 2 {
		t.Fatalf("node 1 counted %v stalled relays; want 2", n)
	}
	noBlob(t, net.Nodes[1], ld)
}

// digestOfBytes is b's sha256 digest, as registries name it.
func digestOfBytes(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}
