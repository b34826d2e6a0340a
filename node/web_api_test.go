package node

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/cluster"
)

// The web address obeys a write only when an operator key of the cluster
// signed it for exactly that request; GET /v1/operator says whether a
// signature proves one; the fleet is one document for concurrent readers,
// gzipped when asked.
func TestWebHandlerOperatorSignatures(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	opKey, stray := filepath.Join(dir, "op.key"), filepath.Join(dir, "stray.key")
	opID, err := cluster.NewKeyFile(opKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.NewKeyFile(stray); err != nil {
		t.Fatal(err)
	}
	cc, err := cluster.New("web", nil, []string{opID.String()})
	if err != nil {
		t.Fatal(err)
	}
	d := runDaemon(t, Config{DataDir: filepath.Join(dir, "data"), Cluster: cc})
	h := d.api().WebHandler()
	sign := func(keyFile, method, uri, body string) string {
		k, err := cluster.LoadKeyFile(keyFile)
		if err != nil {
			t.Fatal(err)
		}
		hdr, err := cluster.SignRequest(k, method, uri, []byte(body), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return hdr
	}
	activate := `{"layer":"nope:1","at":"/opt/x","hosts":"self","op":"activate"}`
	signedAct := `{"signed":{"layer":"nope:1","hosts":"self","op":"activate"}}`
	for _, c := range []struct {
		name, method, path, body, header string
		code                             int
		want                             string
	}{
		{"unsigned write", "POST", "/v1/activate", activate, "", 403, "changes nothing without an operator key"},
		{"a stray key", "POST", "/v1/activate", activate, sign(stray, "POST", "/v1/activate", activate), 403, "is not listed under operators"},
		{"signed for another body", "POST", "/v1/activate", activate, sign(opKey, "POST", "/v1/activate", "{}"), 403, "the signature does not match this request"},
		{"signed for another path", "POST", "/v1/activate", activate, sign(opKey, "GET", "/v1/operator", ""), 403, "the signature does not match this request"},
		{"the operator, a record not signed", "POST", "/v1/activate", activate, sign(opKey, "POST", "/v1/activate", activate), 400, "publishes only activations the operator key signed"},
		{"the operator, a signed record: past the guard", "POST", "/v1/activate", signedAct, sign(opKey, "POST", "/v1/activate", signedAct), 400, "invalid cid"},
		{"operator check unsigned", "GET", "/v1/operator", "", "", 403, "without an operator key"},
		{"operator check signed", "GET", "/v1/operator", "", sign(opKey, "GET", "/v1/operator", ""), 200, opID.String()},
		{"no other route", "POST", "/v1/gc", "", sign(opKey, "POST", "/v1/gc", ""), 404, "no endpoint POST /v1/gc on the web address"},
	} {
		req := httptest.NewRequest(c.method, c.path, strings.NewReader(c.body))
		if c.header != "" {
			req.Header.Set(api.OperatorHeader, c.header)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != c.code || !strings.Contains(rec.Body.String(), c.want) {
			t.Errorf("%s: %d %.300s; want %d naming %q", c.name, rec.Code, rec.Body, c.code, c.want)
		}
	}

	// Readers at once get the same document; gzip when they ask.
	var wg sync.WaitGroup
	bodies := make([][]byte, 8)
	for i := range bodies {
		wg.Go(func() {
			req := httptest.NewRequest("GET", "/v1/fleet", nil)
			if i%2 == 1 {
				req.Header.Set("Accept-Encoding", "gzip")
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			var r io.Reader = rec.Body
			if rec.Header().Get("Content-Encoding") == "gzip" {
				zr, err := gzip.NewReader(rec.Body)
				if err != nil {
					t.Error(err)
					return
				}
				r = zr
			} else if i%2 == 1 {
				t.Errorf("reader %d asked for gzip, got %q", i, rec.Header().Get("Content-Encoding"))
			}
			bodies[i], _ = io.ReadAll(r)
		})
	}
	wg.Wait()
	for i, b := range bodies {
		if !bytes.Contains(b, []byte(`"schema":1`)) || !bytes.Equal(b, bodies[0]) {
			t.Fatalf("reader %d: %.200s; want the document reader 0 got", i, b)
		}
	}
}
