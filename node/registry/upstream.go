package registry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/BurntSushi/toml"
)

// Upstream is a registry that containerd's ?ns= may name: where it is and
// how to reach it. TLS unless PlainHTTP is set.
type Upstream struct {
	// Endpoint is the registry's base URL (default https://NS).
	Endpoint string `toml:"endpoint"`
	// PlainHTTP allows an http:// endpoint; without it only https is used.
	PlainHTTP bool `toml:"plain_http"`
	// CA is a PEM file of extra roots for the endpoint's certificate.
	CA string `toml:"ca"`
	// Credentials is a file holding USER:PASSWORD on one line, sent as
	// basic auth or to get a bearer token.
	Credentials string `toml:"credentials"`
	// Default makes this the upstream of requests that name none (no ns,
	// no path prefix), once the cluster has no image by that name: what
	// Docker's registry-mirrors needs, as it sends neither.
	Default bool `toml:"default"`

	base       *url.URL
	user, pass string
	client     *http.Client
	mu         sync.Mutex
	tokens     map[string]string // bearer token by scope
}

// Upstreams are the configured upstream registries by the name ?ns= uses
// (for example docker.io or 10.0.0.5:5000).
type Upstreams map[string]*Upstream

// LoadUpstreams reads a registries file:
//
//	[registries."docker.io"]
//	endpoint = "https://registry-1.docker.io"
//	credentials = "/etc/p2pimg/docker.io.cred"   # USER:PASSWORD
//	[registries."10.0.0.5:5000"]
//	endpoint = "http://10.0.0.5:5000"
//	plain_http = true
func LoadUpstreams(path string) (Upstreams, error) {
	var f struct {
		Registries map[string]*Upstream `toml:"registries"`
	}
	md, err := toml.DecodeFile(path, &f)
	if err != nil {
		return nil, fmt.Errorf("registries file %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return nil, fmt.Errorf("registries file %s: unknown setting %q (known: endpoint, plain_http, ca, credentials, default under [registries.\"NAME\"])", path, und[0].String())
	}
	def := ""
	for ns, u := range f.Registries {
		if err := u.init(ns); err != nil {
			return nil, fmt.Errorf("registries file %s: %w", path, err)
		}
		if u.Default {
			if def != "" {
				return nil, fmt.Errorf("registries file %s: both %s and %s say default = true; one registry may be the default", path, def, ns)
			}
			def = ns
		}
	}
	return f.Registries, nil
}

// Names are the configured registries, sorted.
func (us Upstreams) Names() []string {
	var out []string
	for ns := range us {
		out = append(out, ns)
	}
	sort.Strings(out)
	return out
}

// defaultNS is the registry marked default ("" when none).
func (us Upstreams) defaultNS() string {
	for _, ns := range us.Names() {
		if us[ns].Default {
			return ns
		}
	}
	return ""
}

// Add checks u and adds it as ns (for tests and callers without a file).
func (us Upstreams) Add(ns string, u *Upstream) error {
	if err := u.init(ns); err != nil {
		return err
	}
	us[ns] = u
	return nil
}

// URL is the endpoint's base URL (after init).
func (u *Upstream) URL() string { return u.base.String() }

func (u *Upstream) init(ns string) error {
	if ns == "" || strings.ContainsAny(ns, "/ ") {
		return fmt.Errorf("registry %q: the name is a host[:port] as containerd sends it in ?ns=", ns)
	}
	if u.Endpoint == "" {
		u.Endpoint = "https://" + ns
	}
	b, err := url.Parse(u.Endpoint)
	if err != nil || b.Host == "" || (b.Scheme != "https" && b.Scheme != "http") {
		return fmt.Errorf("registry %s: endpoint %q: want https://HOST[:PORT]", ns, u.Endpoint)
	}
	if b.Scheme == "http" && !u.PlainHTTP {
		return fmt.Errorf("registry %s: endpoint %q is plain HTTP: set plain_http = true to allow it", ns, u.Endpoint)
	}
	b.Path = strings.TrimSuffix(b.Path, "/")
	u.base = b
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.ResponseHeaderTimeout = 30 * time.Second
	if u.CA != "" {
		pem, err := os.ReadFile(u.CA)
		if err != nil {
			return fmt.Errorf("registry %s: ca: %w", ns, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("registry %s: ca %s: no PEM certificates in it", ns, u.CA)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	if u.Credentials != "" {
		data, err := os.ReadFile(u.Credentials)
		if err != nil {
			return fmt.Errorf("registry %s: credentials: %w", ns, err)
		}
		user, pass, ok := strings.Cut(strings.TrimSpace(string(data)), ":")
		if !ok || user == "" {
			return fmt.Errorf("registry %s: credentials file %s: want one line USER:PASSWORD", ns, u.Credentials)
		}
		u.user, u.pass = user, pass
	}
	if u.client == nil {
		u.client = &http.Client{Transport: tr}
	}
	u.tokens = map[string]string{}
	return nil
}

// SetClient replaces the HTTP client (tests: an httptest TLS server's).
func (u *Upstream) SetClient(c *http.Client) { u.client = c }

// errUpstreamMissing: the upstream answered 404.
var errUpstreamMissing = errors.New("upstream registry does not have it")

// get asks the upstream for /v2/REPO/KIND/REF with the headers hdr,
// authenticating as its challenge asks. A 404 is errUpstreamMissing; any
// other non-2xx an error naming the status.
func (u *Upstream) get(ctx context.Context, method, repo, kind, ref string, hdr http.Header) (*http.Response, error) {
	target := u.base.String() + "/v2/" + repo + "/" + kind + "/" + ref
	scope := "repository:" + repo + ":pull"
	do := func() (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, method, target, nil)
		if err != nil {
			return nil, err
		}
		for k, vs := range hdr {
			req.Header[k] = vs
		}
		u.mu.Lock()
		tok := u.tokens[scope]
		u.mu.Unlock()
		switch {
		case tok != "":
			req.Header.Set("Authorization", "Bearer "+tok)
		case u.user != "":
			req.SetBasicAuth(u.user, u.pass)
		}
		return u.client.Do(req)
	}
	resp, err := do()
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", u.base.Host, err)
	}
	if resp.StatusCode == http.StatusUnauthorized {
		chal := resp.Header.Get("WWW-Authenticate")
		resp.Body.Close()
		if err := u.authorize(ctx, chal, scope); err != nil {
			return nil, fmt.Errorf("upstream %s: %s %s: %w", u.base.Host, kind, ref, err)
		}
		if resp, err = do(); err != nil {
			return nil, fmt.Errorf("upstream %s: %w", u.base.Host, err)
		}
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		resp.Body.Close()
		return nil, fmt.Errorf("upstream %s: %s/%s %s: %w", u.base.Host, repo, kind, ref, errUpstreamMissing)
	case resp.StatusCode/100 != 2:
		resp.Body.Close()
		return nil, fmt.Errorf("upstream %s: %s/%s %s: %s", u.base.Host, repo, kind, ref, resp.Status)
	}
	return resp, nil
}

// authorize gets a bearer token for scope as a Bearer challenge says (or
// checks that basic credentials exist for a Basic one).
func (u *Upstream) authorize(ctx context.Context, challenge, scope string) error {
	kind, params, _ := strings.Cut(challenge, " ")
	switch strings.ToLower(kind) {
	case "basic":
		if u.user == "" {
			return errors.New("the registry wants credentials: set credentials = FILE for it")
		}
		return nil
	case "bearer":
	default:
		return fmt.Errorf("unauthorized, with an authentication challenge %q this mirror does not speak", challenge)
	}
	p := parseChallenge(params)
	realm, err := url.Parse(p["realm"])
	if err != nil || realm.Host == "" {
		return fmt.Errorf("bearer challenge without a usable realm: %q", challenge)
	}
	q := realm.Query()
	if p["service"] != "" {
		q.Set("service", p["service"])
	}
	q.Set("scope", scope)
	realm.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, realm.String(), nil)
	if err != nil {
		return err
	}
	if u.user != "" {
		req.SetBasicAuth(u.user, u.pass)
	}
	resp, err := u.client.Do(req)
	if err != nil {
		return fmt.Errorf("token: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("token from %s: %s", realm.Host, resp.Status)
	}
	var t struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&t); err != nil {
		return fmt.Errorf("token from %s: %w", realm.Host, err)
	}
	if t.Token == "" {
		t.Token = t.AccessToken
	}
	if t.Token == "" {
		return fmt.Errorf("token from %s: empty", realm.Host)
	}
	u.mu.Lock()
	u.tokens[scope] = t.Token
	u.mu.Unlock()
	return nil
}

// parseChallenge reads key="value" pairs of a WWW-Authenticate header.
func parseChallenge(s string) map[string]string {
	out := map[string]string{}
	for s != "" {
		s = strings.TrimLeft(s, " ,")
		k, rest, ok := strings.Cut(s, "=")
		if !ok {
			break
		}
		var v string
		if strings.HasPrefix(rest, `"`) {
			end := strings.Index(rest[1:], `"`)
			if end < 0 {
				break
			}
			v, s = rest[1:1+end], rest[2+end:]
		} else {
			v, s, _ = strings.Cut(rest, ",")
		}
		out[strings.ToLower(strings.TrimSpace(k))] = v
	}
	return out
}

// blobFrom is blob d of repo (size bytes, -1: unknown) from byte off on:
// a Range request, and when the upstream answers with the whole blob (or
// refuses the range), the whole blob with its first off bytes skipped.
func (u *Upstream) blobFrom(ctx context.Context, repo, d string, off, size int64) (io.ReadCloser, error) {
	rng := fmt.Sprintf("bytes=%d-", off)
	if size > off {
		rng += strconv.FormatInt(size-1, 10) // some registries want both ends
	}
	resp, err := u.get(ctx, http.MethodGet, repo, "blobs", d, http.Header{"Range": {rng}})
	if err != nil && strings.Contains(err.Error(), strconv.Itoa(http.StatusRequestedRangeNotSatisfiable)) {
		resp, err = u.get(ctx, http.MethodGet, repo, "blobs", d, nil)
	}
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusPartialContent {
		if !strings.HasPrefix(resp.Header.Get("Content-Range"), fmt.Sprintf("bytes %d-", off)) {
			resp.Body.Close()
			return nil, fmt.Errorf("upstream %s: blob %s: asked from byte %d, got range %q", u.base.Host, d, off, resp.Header.Get("Content-Range"))
		}
		return resp.Body, nil
	}
	if _, err := io.CopyN(io.Discard, resp.Body, off); err != nil {
		resp.Body.Close()
		return nil, fmt.Errorf("upstream %s: blob %s: skipping to byte %d: %w", u.base.Host, d, off, err)
	}
	return resp.Body, nil
}
