// Package client talks to a p2pimg daemon over its local API socket.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/cluster"
)

// ErrDaemonDown: nothing answers on the socket.
var ErrDaemonDown = errors.New("the p2pimg daemon is not running")

// Client calls one daemon. It is safe for concurrent use.
type Client struct {
	socket   string
	http     *http.Client
	operator crypto.PrivKey // signs every request when set
}

// WithOperator returns a client that signs every request with an operator
// key, which gives a caller other than root every right on the daemon
// (when the cluster file lists the key under operators).
func (c *Client) WithOperator(k crypto.PrivKey) *Client {
	cc := *c
	cc.operator = k
	return &cc
}

// New returns a client for the daemon listening on socket.
func New(socket string) *Client {
	return &Client{socket: socket, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}}
}

// Socket is the path this client dials.
func (c *Client) Socket() string { return c.socket }

func (c *Client) do(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	var b []byte
	if body != nil {
		var err error
		b, err = json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://p2pimg"+api.Version+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.operator != nil {
		h, err := cluster.SignRequest(c.operator, method, req.URL.RequestURI(), b, time.Now())
		if err != nil {
			return nil, fmt.Errorf("sign the request with the operator key: %w", err)
		}
		req.Header.Set(api.OperatorHeader, h)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%w at %s: start it with `p2pimg daemon --data DIR`, or point --socket or P2PIMG_SOCKET at a running one", ErrDaemonDown, c.socket)
		}
		return nil, c.failed(ctx, method, path, err)
	}
	return resp, nil
}

// failed says why a request got no answer: the caller's time-out or
// interrupt, else the connection's error.
func (c *Client) failed(ctx context.Context, method, path string, err error) error {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("%s %s: no answer from the daemon at %s before the time-out: %w", method, path, c.socket, context.DeadlineExceeded)
	case ctx.Err() != nil:
		return fmt.Errorf("%s %s: %w", method, path, ctx.Err())
	}
	return fmt.Errorf("talk to the daemon at %s: %w", c.socket, err)
}

// call makes a plain JSON request and decodes the answer into out.
func (c *Client) call(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.do(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return decodeError(resp)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func decodeError(resp *http.Response) error {
	var e api.Error
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || e.Message == "" {
		return fmt.Errorf("daemon answered %s", resp.Status)
	}
	return &e
}

// Events receives the progress and warnings of a long operation.
type Events func(api.Event)

// stream makes a streamed request: events go to on, the final result into out.
func (c *Client) stream(ctx context.Context, path string, body, out any, on Events) error {
	resp, err := c.do(ctx, http.MethodPost, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return decodeError(resp)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		var ev struct {
			api.Event
			Result json.RawMessage `json:"result,omitempty"`
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("daemon sent a malformed event: %w", err)
		}
		switch {
		case ev.Error != nil:
			return ev.Error
		case ev.Result != nil:
			return json.Unmarshal(ev.Result, out)
		case on != nil:
			on(ev.Event)
		}
	}
	if err := sc.Err(); err != nil {
		if ctx.Err() != nil {
			return c.failed(ctx, http.MethodPost, path, err)
		}
		return fmt.Errorf("the daemon at %s broke off its answer to %s (did it stop or crash? see its log): %w", c.socket, path, err)
	}
	return fmt.Errorf("the daemon at %s closed its answer to %s without a result (did it stop? see its log)", c.socket, path)
}

// Status reports whether the daemon is starting or ready.
func (c *Client) Status(ctx context.Context) (api.Status, error) {
	var st api.Status
	return st, c.call(ctx, http.MethodGet, "/status", nil, &st)
}

// Add builds a layer from a path the daemon can read.
func (c *Client) Add(ctx context.Context, req api.AddRequest, on Events) (api.AddResult, error) {
	var r api.AddResult
	return r, c.stream(ctx, "/layers", req, &r, on)
}

// Checkout writes a layer into a directory on the daemon's host.
func (c *Client) Checkout(ctx context.Context, req api.CheckoutRequest, on Events) (api.CheckoutResult, error) {
	var r api.CheckoutResult
	return r, c.stream(ctx, "/checkout", req, &r, on)
}

// Layers lists the daemon's layers.
func (c *Client) Layers(ctx context.Context) ([]chunk.Layer, error) {
	var ls []chunk.Layer
	return ls, c.call(ctx, http.MethodGet, "/layers", nil, &ls)
}

// Remove forgets a layer name.
func (c *Client) Remove(ctx context.Context, name string) error {
	var out struct{}
	return c.call(ctx, http.MethodDelete, "/layers/"+url.PathEscape(name), nil, &out)
}

// GC removes unreferenced chunks.
func (c *Client) GC(ctx context.Context) (api.GCResult, error) {
	var r api.GCResult
	return r, c.call(ctx, http.MethodPost, "/gc", nil, &r)
}

// Verify re-hashes every chunk.
func (c *Client) Verify(ctx context.Context, on Events) (api.VerifyResult, error) {
	var r api.VerifyResult
	return r, c.stream(ctx, "/verify", nil, &r, on)
}

// Stats summarises the store.
func (c *Client) Stats(ctx context.Context) (api.Stats, error) {
	var r api.Stats
	return r, c.call(ctx, http.MethodGet, "/stats", nil, &r)
}

// Fetch makes a layer of the cluster catalogue complete on this host.
func (c *Client) Fetch(ctx context.Context, name string, on Events) (api.FetchResult, error) {
	var r api.FetchResult
	return r, c.stream(ctx, "/fetch", api.FetchRequest{Name: name}, &r, on)
}

// Identity is the daemon's peer id and addresses.
func (c *Client) Identity(ctx context.Context) (api.Identity, error) {
	var r api.Identity
	return r, c.call(ctx, http.MethodGet, "/id", nil, &r)
}

// Peers lists connected peers.
func (c *Client) Peers(ctx context.Context) ([]api.Peer, error) {
	var r []api.Peer
	return r, c.call(ctx, http.MethodGet, "/peers", nil, &r)
}

// Catalog is the cluster's view of its layers.
func (c *Client) Catalog(ctx context.Context) ([]api.ClusterLayer, error) {
	var r []api.ClusterLayer
	return r, c.call(ctx, http.MethodGet, "/catalog", nil, &r)
}

// Partition cuts the daemon off from these peers; none heals.
func (c *Client) Partition(ctx context.Context, peers []string) error {
	var out struct{}
	return c.call(ctx, http.MethodPost, "/partition", api.PartitionRequest{Peers: peers}, &out)
}

// Activate publishes an activation (see api.ActivateRequest).
func (c *Client) Activate(ctx context.Context, req api.ActivateRequest) (api.ActivateResult, error) {
	var r api.ActivateResult
	return r, c.call(ctx, http.MethodPost, "/activate", req, &r)
}

// Activations lists every known host's activation states.
func (c *Client) Activations(ctx context.Context) ([]api.HostActivation, error) {
	var r []api.HostActivation
	return r, c.call(ctx, http.MethodGet, "/activations", nil, &r)
}

// Resolve is the manifest CID a layer name stands for in the cluster.
func (c *Client) Resolve(ctx context.Context, name string) (string, error) {
	var r map[string]string
	err := c.call(ctx, http.MethodGet, "/resolve/"+url.PathEscape(name), nil, &r)
	return r["cid"], err
}

// Common compares layers on the daemon's host.
func (c *Client) Common(ctx context.Context, layers []string) (api.CommonResult, error) {
	var r api.CommonResult
	q := url.Values{"layer": layers}
	return r, c.call(ctx, http.MethodGet, "/common?"+q.Encode(), nil, &r)
}

// InstallLicense has the keepers install a licence (its file form).
func (c *Client) InstallLicense(ctx context.Context, text string) (api.LicenseInfo, error) {
	var r api.LicenseInfo
	return r, c.call(ctx, http.MethodPost, "/license/install", api.LicenseInstallRequest{License: text}, &r)
}

// Claim asks for a seat; with req.Wait it waits (until ctx ends) while none is free.
func (c *Client) Claim(ctx context.Context, req api.ClaimRequest) (api.Grant, error) {
	var r api.Grant
	return r, c.call(ctx, http.MethodPost, "/license/claim", req, &r)
}

// Release gives up a consumer's seat (or a whole seat by token).
func (c *Client) Release(ctx context.Context, req api.ReleaseRequest) (api.ReleaseResult, error) {
	var r api.ReleaseResult
	return r, c.call(ctx, http.MethodPost, "/license/release", req, &r)
}

// Check reports whether a grant token is still current.
func (c *Client) Check(ctx context.Context, token uint64) (api.CheckResult, error) {
	var r api.CheckResult
	return r, c.call(ctx, http.MethodGet, "/license/check?token="+strconv.FormatUint(token, 10), nil, &r)
}

// Licenses lists licences, held seats and this host's grants.
func (c *Client) Licenses(ctx context.Context) (api.LicenseList, error) {
	var r api.LicenseList
	return r, c.call(ctx, http.MethodGet, "/license", nil, &r)
}

// SetHostPolicy replaces the daemon host's policy (TOML text).
func (c *Client) SetHostPolicy(ctx context.Context, text string) error {
	var r json.RawMessage
	return c.call(ctx, http.MethodPost, "/policy/host", api.PolicyRequest{Policy: text}, &r)
}

// SetLayerPolicy publishes a layer again with a new layer policy (TOML text).
func (c *Client) SetLayerPolicy(ctx context.Context, name, text string) (api.ClusterLayer, error) {
	var r api.ClusterLayer
	return r, c.call(ctx, http.MethodPost, "/policy/layer", api.PolicyRequest{Name: name, Policy: text}, &r)
}

// PolicyShow is a layer's effective policy on a host ("" = the daemon's).
func (c *Client) PolicyShow(ctx context.Context, name, host string) (api.PolicyResult, error) {
	var r api.PolicyResult
	q := url.Values{"name": {name}, "host": {host}}
	return r, c.call(ctx, http.MethodGet, "/policy/show?"+q.Encode(), nil, &r)
}

// PolicyCheck lists every host and layer pair that conflicts.
func (c *Client) PolicyCheck(ctx context.Context) ([]api.PolicyResult, error) {
	var r []api.PolicyResult
	return r, c.call(ctx, http.MethodGet, "/policy/check", nil, &r)
}

// Diff shows how a host's exposed view of a layer differs from it (host
// "" = the daemon's own).
func (c *Client) Diff(ctx context.Context, name, host string) (api.DiffResult, error) {
	var r api.DiffResult
	return r, c.call(ctx, http.MethodGet, "/diff/"+url.PathEscape(name)+"?"+url.Values{"host": {host}}.Encode(), nil, &r)
}

// Commit captures an overlayfs upper directory as a layer on a base.
func (c *Client) Commit(ctx context.Context, req api.CommitRequest, on Events) (api.AddResult, error) {
	var r api.AddResult
	return r, c.stream(ctx, "/commit", req, &r, on)
}

// Split makes a common layer of what the layers share and thin new versions of them.
func (c *Client) Split(ctx context.Context, req api.SplitRequest) (api.SplitResult, error) {
	var r api.SplitResult
	return r, c.call(ctx, http.MethodPost, "/split", req, &r)
}

// Rebase re-points a thin layer at a new version of its base.
func (c *Client) Rebase(ctx context.Context, name, onto string) (api.Layer, error) {
	var r api.Layer
	return r, c.call(ctx, http.MethodPost, "/rebase", api.RebaseRequest{Name: name, Onto: onto}, &r)
}

// Import makes layers of a container image (docker save tar or OCI layout).
func (c *Client) Import(ctx context.Context, req api.ImportRequest, on Events) (api.ImportResult, error) {
	var r api.ImportResult
	return r, c.stream(ctx, "/import", req, &r, on)
}

// ReloadCluster makes the daemon read its cluster, members and PSK files
// again and apply the lists in them.
func (c *Client) ReloadCluster(ctx context.Context) (*api.ClusterReload, error) {
	var out api.ClusterReload
	if err := c.call(ctx, http.MethodPost, "/cluster/reload", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Forget drops what a gone host said of itself from the daemon's catalogue.
func (c *Client) Forget(ctx context.Context, host string) error {
	return c.call(ctx, http.MethodPost, "/cluster/forget", api.ForgetRequest{Peer: host}, &struct{}{})
}
