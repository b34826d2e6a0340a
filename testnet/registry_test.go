package testnet_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/crane"
	ggcrreg "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/random"
	dto "github.com/prometheus/client_model/go"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/faults"
	"github.com/p2pimg/p2pimg/node/registry"
	"github.com/p2pimg/p2pimg/testnet"
)

// upstreamNS is the name the test's upstream registry is configured under
// (what containerd would send as ?ns=).
const upstreamNS = "upstream.test"

// upstream is go-containerregistry's registry in this process, over TLS;
// tamper, when set, may rewrite a blob response's body.
type upstream struct {
	*httptest.Server
	tamper atomic.Pointer[func(path string, body []byte) []byte]
	hang   atomic.Pointer[chan struct{}] // blob responses stop half way until closed
	blobs  atomic.Int64                  // blob bytes served

	mu   sync.Mutex
	gets map[string]int // blob GETs by digest, manifest GETs by "manifest " and tag or digest
}

// getsOf is how many times blob d (or "manifest REF") was asked for.
func (u *upstream) getsOf(d string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.gets[d]
}

func newUpstream(t *testing.T) *upstream {
	u := &upstream{gets: map[string]int{}}
	reg := ggcrreg.New(ggcrreg.Logger(log.New(io.Discard, "", 0)))
	u.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/blobs/sha256:") || r.Method != http.MethodGet {
			if _, ref, ok := strings.Cut(r.URL.Path, "/manifests/"); ok && r.Method == http.MethodGet {
				u.mu.Lock()
				u.gets["manifest "+ref]++
				u.mu.Unlock()
			}
			reg.ServeHTTP(w, r)
			return
		}
		u.mu.Lock()
		u.gets[r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]]++
		u.mu.Unlock()
		rec := httptest.NewRecorder()
		reg.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		if f := u.tamper.Load(); f != nil {
			body = (*f)(r.URL.Path, body)
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.WriteHeader(rec.Code)
		if h := u.hang.Load(); h != nil && len(body) > 1<<20 {
			w.Write(body[:len(body)/2])
			w.(http.Flusher).Flush()
			<-*h
			panic(http.ErrAbortHandler) // cut the body short
		}
		n, _ := w.Write(body)
		u.blobs.Add(int64(n))
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) host() string { return strings.TrimPrefix(u.URL, "https://") }

// push writes a random image of n layers of size bytes as repo:tag.
func (u *upstream) push(t *testing.T, ref string, size int64, n int) v1.Image {
	t.Helper()
	img, err := random.Image(size, int64(n))
	if err != nil {
		t.Fatal(err)
	}
	if err := crane.Push(img, u.host()+"/"+ref, crane.WithTransport(u.Client().Transport)); err != nil {
		t.Fatal(err)
	}
	return img
}

// mirrorNet is n nodes, each serving the registry mirror on 127.0.0.1 with
// up configured as upstreamNS.
func mirrorNet(t *testing.T, n int, up *upstream, opts ...testnet.Option) *testnet.Net {
	t.Helper()
	opts = append(opts, testnet.WithConfig(func(i int, c *node.Config) {
		c.Registry = "127.0.0.1:0"
		c.Upstreams = registry.Upstreams{}
		if up != nil {
			u := &registry.Upstream{Endpoint: up.URL}
			if err := c.Upstreams.Add(upstreamNS, u); err != nil {
				t.Fatal(err)
			}
			u.SetClient(up.Client())
		}
	}))
	net := testnet.New(t, n, opts...)
	t.Cleanup(func() { // before the testnet's leak check
		if up != nil {
			up.Close()
		}
		clientTransport.CloseIdleConnections()
	})
	return net
}

func mirrorAddr(nd *testnet.Node) string { return nd.Node().RegistryAddr().String() }

var clientTransport = http.DefaultTransport.(*http.Transport).Clone()

// nsTransport adds ?ns= to every request, as containerd does for a mirror.
type nsTransport string

func (ns nsTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	q := r.URL.Query()
	q.Set("ns", string(ns))
	r.URL.RawQuery = q.Encode()
	return clientTransport.RoundTrip(r)
}

// pullAll pulls ref with crane and reads every layer (crane checks each
// against its digest); it returns the manifest digest.
func pullAll(ref string, rt http.RoundTripper, opts ...crane.Option) (v1.Hash, error) {
	img, err := crane.Pull(ref, append(opts, crane.Insecure, crane.WithTransport(rt))...)
	if err != nil {
		return v1.Hash{}, err
	}
	ls, err := img.Layers()
	if err != nil {
		return v1.Hash{}, err
	}
	for _, l := range ls {
		rc, err := l.Compressed()
		if err != nil {
			return v1.Hash{}, err
		}
		_, err = io.Copy(io.Discard, rc)
		if cerr := rc.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return v1.Hash{}, err
		}
	}
	if _, err := img.RawConfigFile(); err != nil {
		return v1.Hash{}, err
	}
	return img.Digest()
}

// servedBy is the blob and manifest bytes node nd's mirror served from src.
func servedBy(t *testing.T, nd *testnet.Node, src string) float64 {
	t.Helper()
	return counter(t, nd, "p2pimg_registry_bytes_served_total", "source", src)
}

func labelIs(m *dto.Metric, k, v string) bool {
	for _, l := range m.Label {
		if l.GetName() == k && l.GetValue() == v {
			return true
		}
	}
	return false
}

func imageDigest(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// skopeo copies an image through host A's mirror (the registry named by a
// path prefix, as a client without ns support would); crane then pulls it
// through host B's mirror, containerd-style with ?ns=, while the upstream
// is stopped: it comes from the cluster (A by peers, or B's own store for
// the blobs B fetched for A's pull), every digest matching.
func TestRegistryMirrorUpstreamThenPeers(t *testing.T) {
	up := newUpstream(t)
	img := up.push(t, "demo/app:1", 3<<20, 3)
	want := imageDigest(t, img)
	net := mirrorNet(t, 2, up)
	a, b := net.Nodes[0], net.Nodes[1]

	if _, err := exec.LookPath("skopeo"); err == nil {
		dir := filepath.Join(t.TempDir(), "img")
		out, err := exec.Command("skopeo", "copy", "--src-tls-verify=false", "--retry-times", "0",
			"docker://"+mirrorAddr(a)+"/"+upstreamNS+"/demo/app:1", "dir:"+dir).CombinedOutput()
		if err != nil {
			t.Fatalf("skopeo copy through A: %v\n%s", err, out)
		}
		checkDirCopy(t, dir, img)
	} else {
		t.Log("skopeo not installed (.ci/run installs it): pulling through A with crane instead")
		if got, err := pullAll(mirrorAddr(a)+"/demo/app:1", nsTransport(upstreamNS)); err != nil || got != want {
			t.Fatalf("pull through A: %v, digest %s want %s", err, got, want)
		}
	}
	if up.blobs.Load() == 0 {
		t.Fatal("A's mirror served the image without asking upstream for its blobs")
	}

	up.Close() // from now on only the cluster has it
	net.Eventually(20*time.Second, "B's catalogue maps the tag", func() bool {
		c, err := b.Client.Resolve(ctx, "oci/ref/"+upstreamNS+"/demo/app:1")
		return err == nil && c != ""
	})
	got, err := pullAll(mirrorAddr(b)+"/demo/app:1", nsTransport(upstreamNS))
	if err != nil || got != want {
		t.Fatalf("crane pull through B with the upstream stopped: %v, digest %s want %s", err, got, want)
	}
	// A blob the cluster's rendezvous ranks B first was fetched from
	// upstream by B itself during A's pull (A got it over the relay), so
	// B serves it from its own store: local, not peer.
	fromCluster := servedBy(t, b, "peer") + servedBy(t, b, "local")
	if fromCluster == 0 || servedBy(t, b, "upstream") != 0 {
		t.Fatalf("B served %v bytes from peers, %v from its store and %v from upstream; want none from upstream", servedBy(t, b, "peer"), servedBy(t, b, "local"), servedBy(t, b, "upstream"))
	}
}

// checkDirCopy checks skopeo's dir: copy against the pushed image: the
// manifest's exact bytes and every blob.
func checkDirCopy(t *testing.T, dir string, img v1.Image) {
	t.Helper()
	raw, _ := img.RawManifest()
	got, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("skopeo's manifest differs from upstream's (%v)", err)
	}
	m, _ := img.Manifest()
	for _, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
		data, err := os.ReadFile(filepath.Join(dir, d.Digest.Hex))
		if err != nil {
			t.Fatalf("blob %s not copied: %v", d.Digest, err)
		}
		if s := sha256.Sum256(data); hex.EncodeToString(s[:]) != d.Digest.Hex {
			t.Fatalf("blob %s copied with other bytes", d.Digest)
		}
	}
}

func get(t *testing.T, url string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := clientTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

// An image imported on A is pulled through B's mirror by the name it was
// imported as; Range requests that straddle chunks return the right bytes;
// misses are fast OCI errors.
func TestRegistryImportedImageAndRanges(t *testing.T) {
	net := mirrorNet(t, 2, nil)
	a, b := net.Nodes[0], net.Nodes[1]
	img, err := random.Image(1<<20, 2)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "demo/app:2"})); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"", "demo/app:1", "demo/app:3"} { // the image's own reference, then two more tags
		if _, err := a.Client.Import(ctx, api.ImportRequest{Path: dir, Name: name}, nil); err != nil {
			t.Fatal(err)
		}
	}
	want := imageDigest(t, img)
	for _, tag := range []string{"1", "2", "3"} {
		net.Eventually(20*time.Second, "B's catalogue maps demo/app:"+tag, func() bool {
			c, err := b.Client.Resolve(ctx, "oci/ref/demo/app:"+tag)
			return err == nil && c != ""
		})
	}
	for _, c := range []struct{ query, tags, link string }{
		{"", `["1","2","3"]`, ""},
		{"?n=2", `["1","2"]`, `</v2/demo/app/tags/list?last=2&n=2>; rel="next"`},
		{"?n=2&last=2", `["3"]`, ""},
		{"?n=0", `[]`, ""},
	} {
		resp, body := get(t, "http://"+mirrorAddr(b)+"/v2/demo/app/tags/list"+c.query)
		if resp.StatusCode != 200 || string(body) != `{"name":"demo/app","tags":`+c.tags+`}` || resp.Header.Get("Link") != c.link {
			t.Fatalf("tags/list%s: %s %s, Link %q", c.query, resp.Status, body, resp.Header.Get("Link"))
		}
	}
	if resp, body := get(t, "http://"+mirrorAddr(b)+"/v2/demo/nope/tags/list"); resp.StatusCode != 404 || !strings.Contains(string(body), "NAME_UNKNOWN") {
		t.Fatalf("tags of an unknown repository: %s %s", resp.Status, body)
	}
	if got, err := pullAll(mirrorAddr(b)+"/demo/app:2", clientTransport); err != nil || got != want {
		t.Fatalf("pull of the imported image through B: %v, digest %s want %s", err, got, want)
	}

	resp, body := get(t, "http://"+mirrorAddr(b)+"/v2/demo/app/manifests/2", "Accept", "application/vnd.docker.distribution.manifest.v2+json")
	raw, _ := img.RawManifest()
	if resp.StatusCode != 200 || !bytes.Equal(body, raw) || resp.Header.Get("Docker-Content-Digest") != want.String() ||
		resp.Header.Get("Content-Length") != fmt.Sprint(len(raw)) {
		t.Fatalf("manifest: %s %q digest %q", resp.Status, body, resp.Header.Get("Docker-Content-Digest"))
	}
	if resp, body := get(t, "http://"+mirrorAddr(b)+"/v2/demo/app/manifests/2", "Accept", "application/vnd.oci.image.index.v1+json"); resp.StatusCode != 200 ||
		!bytes.Equal(body, raw) || resp.Header.Get("Content-Type") != "application/vnd.docker.distribution.manifest.v2+json" {
		t.Fatalf("a manifest type the client did not list: %s %q (want the stored bytes under their own type)", resp.Status, resp.Header.Get("Content-Type"))
	}

	ls, _ := img.Layers()
	ld, _ := ls[0].Digest()
	rc, _ := ls[0].Compressed()
	whole, _ := io.ReadAll(rc)
	for _, nd := range []*testnet.Node{a, b} {
		for _, r := range [][2]int{{60000, 300000}, {0, 0}, {len(whole) - 10, len(whole) - 1}} {
			resp, body := get(t, "http://"+mirrorAddr(nd)+"/v2/demo/app/blobs/"+ld.String(), "Range", fmt.Sprintf("bytes=%d-%d", r[0], r[1]))
			if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, whole[r[0]:r[1]+1]) ||
				resp.Header.Get("Content-Range") != fmt.Sprintf("bytes %d-%d/%d", r[0], r[1], len(whole)) {
				t.Fatalf("node %d range %v: %s, %d bytes, %q", nd.Index, r, resp.Status, len(body), resp.Header.Get("Content-Range"))
			}
		}
		resp, body := get(t, "http://"+mirrorAddr(nd)+"/v2/demo/app/blobs/"+ld.String(), "Range", fmt.Sprintf("bytes=%d-", len(whole)))
		if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
			t.Fatalf("range past the end: %s %s", resp.Status, body)
		}
	}

	start := time.Now()
	resp, body = get(t, "http://"+mirrorAddr(b)+"/v2/demo/app/blobs/sha256:"+strings.Repeat("0", 64))
	if resp.StatusCode != 404 || !strings.Contains(string(body), "BLOB_UNKNOWN") {
		t.Fatalf("unknown blob: %s %s", resp.Status, body)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("a miss took %s; containerd should move on fast", d)
	}
	resp, body = get(t, "http://"+mirrorAddr(b)+"/v2/demo/app/manifests/nope")
	if resp.StatusCode != 404 || !strings.Contains(string(body), "MANIFEST_UNKNOWN") {
		t.Fatalf("unknown tag: %s %s", resp.Status, body)
	}
	resp, body = get(t, "http://"+mirrorAddr(b)+"/v2/demo/app/blobs/sha256:xyz")
	if resp.StatusCode != 400 || !strings.Contains(string(body), "DIGEST_INVALID") {
		t.Fatalf("bad digest: %s %s", resp.Status, body)
	}
	resp, _ = get(t, "http://"+mirrorAddr(b)+"/v2/")
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Fatalf("/v2/: %s %v", resp.Status, resp.Header)
	}
}

// A blob upstream tampers with is never served whole nor kept; a blob
// whose upstream dies half way leaves no blob behind, and a later pull
// gets it whole.
func TestRegistryTamperedAndCutBlobs(t *testing.T) {
	up := newUpstream(t)
	img := up.push(t, "demo/bad:1", 2<<20, 1)
	net := mirrorNet(t, 1, up)
	a := net.Nodes[0]
	ls, _ := img.Layers()
	ld, _ := ls[0].Digest()
	blobURL := "http://" + mirrorAddr(a) + "/v2/demo/bad/blobs/" + ld.String() + "?ns=" + upstreamNS

	flip := func(path string, body []byte) []byte {
		body = bytes.Clone(body)
		body[len(body)-5] ^= 1
		return body
	}
	up.tamper.Store(&flip)
	neverWhole(t, blobURL, "a tampered upstream blob")
	noBlob(t, a, ld)

	up.tamper.Store(nil)
	hang := make(chan struct{})
	up.hang.Store(&hang)
	cctx, cancel := context.WithCancel(ctx)
	resp, err := clientTransport.RoundTrip(must(http.NewRequestWithContext(cctx, http.MethodGet, blobURL, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 { // the mirror is streaming the blob from upstream
		t.Fatalf("blob from a slow upstream: %s", resp.Status)
	}
	cancel() // the client goes away mid-blob ...
	resp.Body.Close()
	up.hang.Store(nil)
	close(hang) // ... and so does the upstream
	noBlob(t, a, ld)
	net.Eventually(20*time.Second, "the blob pulled whole once the upstream is well", func() bool {
		resp, err := clientTransport.RoundTrip(must(http.NewRequestWithContext(ctx, http.MethodGet, blobURL, nil)))
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		h := sha256.New()
		_, err = io.Copy(h, resp.Body)
		return err == nil && resp.StatusCode == 200 && "sha256:"+hex.EncodeToString(h.Sum(nil)) == ld.String()
	})
}

func must(r *http.Request, err error) *http.Request {
	if err != nil {
		panic(err)
	}
	return r
}

// noBlob checks that the node keeps no complete blob d (a fetch from
// peers may leave an incomplete record, to resume from; it is never served).
func noBlob(t *testing.T, nd *testnet.Node, d v1.Hash) {
	t.Helper()
	ls, err := nd.Client.Layers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		if l.Name == "oci/blob:sha256-"+d.Hex && l.State == chunk.Complete {
			t.Fatalf("blob %s was kept (%s) though its bytes never all arrived checked", d, l.State)
		}
	}
}

// Eight clients asking host A's mirror for one blob at once: upstream
// serves it once, and every client gets it whole.
func TestRegistryOneFetchPerBlob(t *testing.T) {
	up := newUpstream(t)
	img := up.push(t, "demo/many:1", 2<<20, 1)
	net := mirrorNet(t, 1, up)
	ls, _ := img.Layers()
	ld, _ := ls[0].Digest()
	size, _ := ls[0].Size()
	before := up.blobs.Load()
	url := "http://" + mirrorAddr(net.Nodes[0]) + "/v2/demo/many/blobs/" + ld.String() + "?ns=" + upstreamNS
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			resp, err := clientTransport.RoundTrip(must(http.NewRequestWithContext(ctx, http.MethodGet, url, nil)))
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			h := sha256.New()
			if _, err := io.Copy(h, resp.Body); err != nil || "sha256:"+hex.EncodeToString(h.Sum(nil)) != ld.String() {
				errs <- fmt.Errorf("%s: %v, digest mismatch", resp.Status, err)
				return
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := up.blobs.Load() - before; got != size {
		t.Fatalf("upstream served %d blob bytes for 8 concurrent requests of one %d-byte blob; want it once", got, size)
	}
}

// containerd (when installed and run as root) pulls through host A's
// mirror with a hosts.toml such as `p2pimg registry hosts containerd`
// writes: it sends ?ns=upstream.test, and the image's digest matches.
func TestRegistryContainerdPull(t *testing.T) {
	bin, err := exec.LookPath("containerd")
	ctrBin, err2 := exec.LookPath("ctr")
	if err != nil || err2 != nil || os.Geteuid() != 0 {
		t.Skip("needs containerd and ctr (Debian's containerd package) and root")
	}
	up := newUpstream(t)
	img := up.push(t, "demo/ctr:1", 1<<20, 2)
	want := imageDigest(t, img)
	net := mirrorNet(t, 1, up)
	dir, err := os.MkdirTemp("/tmp", "ctrd") // a short path: the socket's name is limited
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "c.sock")
	os.WriteFile(filepath.Join(dir, "config.toml"), fmt.Appendf(nil, "version = 2\nroot = %q\nstate = %q\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = %q\n",
		filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock), 0o600)
	cd := exec.Command(bin, "--config", filepath.Join(dir, "config.toml"))
	var logs bytes.Buffer
	cd.Stdout, cd.Stderr = &logs, &logs
	if err := cd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cd.Process.Kill(); cd.Wait() }()
	net.Eventually(20*time.Second, "containerd answering", func() bool {
		return exec.Command(ctrBin, "--address", sock, "version").Run() == nil
	})
	hosts := filepath.Join(dir, "certs.d", upstreamNS)
	os.MkdirAll(hosts, 0o755)
	os.WriteFile(filepath.Join(hosts, "hosts.toml"), fmt.Appendf(nil, "server = %q\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
		"https://"+upstreamNS, mirrorAddr(net.Nodes[0])), 0o644)
	out, err := exec.Command(ctrBin, "--address", sock, "-n", "p2pimg", "content", "fetch", "--hosts-dir", filepath.Join(dir, "certs.d"),
		upstreamNS+"/demo/ctr:1").CombinedOutput()
	if err != nil {
		t.Fatalf("ctr content fetch through the mirror: %v\n%s\ncontainerd:\n%s", err, out, logs.String())
	}
	out, err = exec.Command(ctrBin, "--address", sock, "-n", "p2pimg", "images", "ls").CombinedOutput()
	if err != nil || !strings.Contains(string(out), want.String()) {
		t.Fatalf("ctr images ls: %v\n%s\nwant digest %s", err, out, want)
	}
	if servedBy(t, net.Nodes[0], "upstream") == 0 {
		t.Fatal("containerd's pull did not go through the mirror")
	}
}

// A peer that corrupts every chunk it serves: host B's mirror never
// serves the blob whole and keeps none of it.
func TestRegistryTamperingPeer(t *testing.T) {
	net := testnet.New(t, 2, testnet.WithStallTimeout(2*time.Second), testnet.WithConfig(func(i int, c *node.Config) {
		c.Registry = "127.0.0.1:0"
		if i == 0 {
			c.Faults = &faults.Faults{CorruptServe: true}
		}
	}))
	t.Cleanup(clientTransport.CloseIdleConnections)
	a, b := net.Nodes[0], net.Nodes[1]
	img, err := random.Image(1<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p, _ := layout.Write(dir, empty.Index)
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "demo/liar:1"})); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Client.Import(ctx, api.ImportRequest{Path: dir}, nil); err != nil {
		t.Fatal(err)
	}
	ls, _ := img.Layers()
	ld, _ := ls[0].Digest()
	net.Eventually(20*time.Second, "B's catalogue has the blob", func() bool {
		c, err := b.Client.Resolve(ctx, "oci/blob:sha256-"+ld.Hex)
		return err == nil && c != ""
	})
	neverWhole(t, "http://"+mirrorAddr(b)+"/v2/demo/liar/blobs/"+ld.String(), "a blob from a corrupting peer")
	noBlob(t, b, ld)
}

// neverWhole checks that GET url fails, or is cut short before its end.
func neverWhole(t *testing.T, url, what string) {
	t.Helper()
	resp, err := clientTransport.RoundTrip(must(http.NewRequestWithContext(ctx, http.MethodGet, url, nil)))
	if err != nil {
		return
	}
	data, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode == 200 {
		t.Fatalf("%s was served whole (%d bytes)", what, len(data))
	}
}
