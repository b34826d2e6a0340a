package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/testnet"
	"github.com/p2pimg/p2pimg/testnet/browser"
)

// The web view in a real browser (headless Chromium) against a 3-daemon
// testnet: the page follows the fleet live, without a reload, through an
// activation, a seat claimed and a host killed.
func TestWebViewInBrowser(t *testing.T) {
	if _, err := browser.Path(); err != nil {
		t.Skipf("the web view's browser test needs Chromium: %v", err)
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "tn")
	// Announce every 500ms: a killed host shows as unreachable after 12
	// intervals unheard.
	l, err := testnet.Up(ctx, bin, dir, 3, testnet.UpOptions{Announce: 500 * time.Millisecond, Keepers: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Down(context.Background(), false) })
	tn := func(args ...string) string {
		t.Helper()
		return mustCLI(t, nil, append([]string{"--testnet-dir", dir}, args...)...)
	}
	url := strings.TrimSpace(tn("--node", "1", "web"))
	if !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Fatalf("p2pimg web: %q", url)
	}
	readOnly(t, url)

	src := t.TempDir()
	writeTree(t, src)
	tn("--node", "1", "add", "web:1", src)
	waitCatalogCLI(t, dir, 1, "web:1")

	bctx, closeBrowser, err := browser.Open(ctx, filepath.Join(t.TempDir(), "profile"))
	if err != nil {
		t.Fatal(err)
	}
	defer closeBrowser()
	if err := chromedp.Do(bctx, chromedp.Navigate(url)); err != nil {
		t.Fatal(err)
	}
	page := pageWaiter{t, bctx}
	page.until("the three hosts by name, live",
		`document.querySelector("#conn").textContent === "live" && [...document.querySelectorAll("#matrix th.host")].map(h => h.firstChild.textContent).join() === "node1,node2,node3"`)
	page.until("web:1 not activated yet", `cellStates("web:1") === "none,none,none"`)

	// Without a key the page is read-only, and the daemon refuses a write
	// that no operator key signed, from the page as from anyone.
	if got := page.text(`String(document.querySelector("#op-activate").disabled) + " " + document.querySelector("#op-status").textContent.slice(0, 10)`); got != "true Read-only." {
		t.Fatalf("the operator panel without a key: %q", got)
	}
	page.until("an unsigned POST refused", `window.unsigned === 403`, `void fetch("v1/activate", {method: "POST", headers: {"Content-Type": "application/json"}, body: '{"layer":"web:1","at":"/opt/web","hosts":"self","op":"activate"}'}).then(r => window.unsigned = r.status)`)

	// A key that is not among the cluster's operators: the page asks the
	// daemon with a request signed by it, is refused, says why and stays
	// read-only.
	other := filepath.Join(t.TempDir(), "other.key")
	mustCLI(t, nil, "cluster", "operator-key", "-o", other)
	if err := chromedp.Do(bctx, chromedp.SetUploadFiles(chromedp.CSS("#op-key"), []string{other})); err != nil {
		t.Fatal(err)
	}
	page.until("the refusal of a key that is no operator", `document.querySelector("#op-result").textContent.includes("is not listed under operators in the cluster file") && document.querySelector("#op-activate").disabled && document.querySelector("#op-key").dataset.key === ""`)

	// With the testnet's operator key the page activates web:1 everywhere;
	// it shows up without a reload: every cell active, with its mode and
	// path, and the row's summary.
	opID := page.operate(testnet.OperatorKey(dir), "web:1", "/opt/web", "all", "#op-activate")
	if !strings.HasPrefix(opID, "12D3KooW") {
		t.Fatalf("the page's peer id of the operator key: %q", opID)
	}
	page.until("the page's activation published", `document.querySelector("#op-result").textContent === "activate of web:1 published to 3 known host(s)"`)
	page.until("web:1 active on all three hosts", `cellStates("web:1") === "active,active,active"`)
	if got := page.text(`document.querySelector('#matrix tr[data-layer="web:1"] td.summary').textContent`); got != "active 3/3" {
		t.Fatalf("summary of web:1: %q", got)
	}
	if got := page.text(`document.querySelector('#matrix td.cell[data-layer="web:1"]').textContent`); !strings.Contains(got, "at /opt/web") {
		t.Fatalf("cell of web:1: %q", got)
	}

	// Another host's store, as it announced it: node2 now holds web:1's
	// chunks, and the page (served by node1) and the fleet document show
	// its figures.
	node2 := l.Nodes[1].PeerID
	page.until("node2's store with web:1's chunks", fmt.Sprintf(`/^[1-9][0-9.]* [kMGTP]?B stored, dedup [0-9.]+x[1-9][0-9]* chunks · dead [0-9.]+ [kMGTP]?B.* · as of /.test((document.querySelector('#hosts tr[data-host=%q] td.store') || {}).textContent)`, node2))
	var fleet api.Fleet
	if err := json.Unmarshal([]byte(httpGet(t, url+"v1/fleet")), &fleet); err != nil {
		t.Fatalf("the fleet document: %v", err)
	}
	for _, h := range fleet.Hosts {
		if h.ID == node2 && (h.Store == nil || h.Store.Chunks == 0 || h.Store.StoredBytes == 0 || h.Store.DiskTotal == 0 || time.Since(h.Store.At) > 10*time.Minute) {
			t.Fatalf("node2's store in the fleet document: %+v", h.Store)
		}
	}

	// A seat claimed on node 2 appears with its host's name.
	lic := filepath.Join(t.TempDir(), "lic")
	if err := os.WriteFile(lic, []byte(tn("--node", "1", "license", "issue", "--product", "winsrv", "--seats", "2")), 0o600); err != nil {
		t.Fatal(err)
	}
	tn("--node", "1", "license", "install", lic)
	tn("--node", "2", "license", "claim", "winsrv", "--for", "vm1")
	page.until("the seat held by node2", `[...document.querySelectorAll("#holders tbody td")].map(c => c.textContent).slice(0, 4).join() === "winsrv,1,node2,vm1"`)
	if body := httpGet(t, url+"metrics"); !strings.Contains(body, `p2pimg_seats{product="winsrv",state="held"} 1`) || !strings.Contains(body, `p2pimg_seats{product="winsrv",state="free"} 1`) {
		t.Errorf("/metrics lacks the seats of winsrv:\n%s", body)
	}
	page.until("the licence's free seats", `[...document.querySelectorAll("#licenses tbody td")].map(c => c.textContent).slice(0, 4).join() === "winsrv,2,1,1"`)

	// A layer whose policy holds it everywhere, on a host whose policy
	// denies it: that host's cell names the conflict.
	pdir := t.TempDir()
	hostPolicy, layerPolicy := filepath.Join(pdir, "host.toml"), filepath.Join(pdir, "layer.toml")
	os.WriteFile(hostPolicy, []byte("deny = [\"pol:*\"]\n"), 0o644)
	os.WriteFile(layerPolicy, []byte("hold = \"all\"\n"), 0o644)
	tn("--node", "3", "policy", "set-host", hostPolicy)
	tn("--node", "1", "add", "pol:1", src, "--policy", layerPolicy)
	page.until("node3's policy conflict on pol:1", fmt.Sprintf(`(document.querySelector('#matrix td.cell[data-layer="pol:1"][data-host=%q] .conflict') || {}).textContent === "policy conflict: not synced"`, l.Nodes[2].PeerID))

	// A killed host is marked unreachable, its cells stale, and the
	// summary says so; it leaves this host's peers.
	if err := l.Kill(3); err != nil {
		t.Fatal(err)
	}
	node3 := l.Nodes[2].PeerID
	page.until("node3 unreachable", fmt.Sprintf(`document.querySelector('#matrix th.host[data-host=%q]').classList.contains("unreachable")`, node3))
	page.until("node3's cell stale", fmt.Sprintf(`document.querySelector('#matrix td.cell[data-layer="web:1"][data-host=%q]').classList.contains("stale")`, node3))
	page.until("the summary naming the unreachable host", `document.querySelector('#matrix tr[data-layer="web:1"] td.summary').textContent === "active 3/3, 1 unreachable"`)
	page.until("the cards", `document.querySelector("#card-up b").textContent === "2" && document.querySelector("#card-unreachable b").textContent === "1"`)
	page.until("node3 gone from the peers", `[...document.querySelectorAll("#peers tbody td:first-child")].map(c => c.textContent).join() === "node2"`)

	// The page deactivates web:1 on the hosts still up, selected by label.
	page.operate(testnet.OperatorKey(dir), "web:1", "", "node=2", "#op-deactivate")
	page.until("the page's deactivation published", `document.querySelector("#op-result").textContent === "deactivate of web:1 published to 1 known host(s)"`)
	// node2 obeys (the unmount itself is the exposure's business: under
	// load it can stay "deactivating" a while).
	page.until("web:1 deactivating or inactive on node2 only", `/^active,(deactivating|inactive),active$/.test(cellStates("web:1"))`)
}

// pageWaiter polls JavaScript on the page under test.
type pageWaiter struct {
	t   *testing.T
	ctx context.Context
}

// helpers are defined on the page for the conditions below.
const pageHelpers = `window.cellStates = (layer => [...document.querySelectorAll('#matrix td.cell[data-layer="' + layer + '"]')].map(c => c.dataset.state).join())`

// until waits (up to 60 s) for the JavaScript expression cond to be true,
// after running the statements first, if any; on time-out it fails with
// the page's text.
func (p pageWaiter) until(what, cond string, first ...string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 60*time.Second)
	defer cancel()
	for _, js := range first {
		if _, err := chromedp.Run(ctx, chromedp.Evaluate[chromedp.Void](js)); err != nil {
			p.t.Fatalf("web view: %s: %v", what, err)
		}
	}
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool]("("+pageHelpers+", ("+cond+"))", chromedp.WithPollingInterval(100*time.Millisecond))); err != nil {
		p.t.Fatalf("web view: waiting for %s: %v\ncells (layer host state: detail):\n%s\npage:\n%s", what, err,
			p.text(`[...document.querySelectorAll("#matrix td.cell")].map(c => c.dataset.layer + " " + c.dataset.host + " " + c.dataset.state + ": " + c.title).join("\n")`), p.text("document.body.innerText"))
	}
}

// operate loads the operator key file in the page's operator panel, fills
// in the layer, path and hosts, and clicks button; it returns the key's
// peer id as the page shows it.
func (p pageWaiter) operate(key, layer, at, hosts, button string) string {
	p.t.Helper()
	err := chromedp.Do(p.ctx, chromedp.Evaluate[chromedp.Void](`setKey(null)`), chromedp.SetUploadFiles(chromedp.CSS("#op-key"), []string{key}))
	if err != nil {
		p.t.Fatal(err)
	}
	p.until("the key loaded", `document.querySelector("#op-key").dataset.key !== "" && !document.querySelector("#op-activate").disabled`)
	p.until("the layer to choose", fmt.Sprintf(`[...document.querySelectorAll("#op-layer option")].some(o => o.value === %q)`, layer))
	set := fmt.Sprintf(`document.querySelector("#op-layer").value = %q; document.querySelector("#op-at").value = %q; document.querySelector("#op-hosts").value = %q; document.querySelector("#op-result").hidden = true`, layer, at, hosts)
	err = chromedp.Do(p.ctx, chromedp.Evaluate[chromedp.Void](set), chromedp.Click(chromedp.CSS(button)))
	if err != nil {
		p.t.Fatal(err)
	}
	p.until("the answer to "+button, `!document.querySelector("#op-result").hidden`)
	return p.text(`document.querySelector("#op-key").dataset.key`)
}

// text evaluates a JavaScript expression that yields a string.
func (p pageWaiter) text(expr string) string {
	s, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](expr))
	if err != nil {
		return fmt.Sprintf("(%s: %v)", expr, err)
	}
	return s
}

// readOnly checks that the web address serves the fleet and nothing that
// changes the daemon or reads a path.
func readOnly(t *testing.T, url string) {
	t.Helper()
	for _, c := range []struct {
		method, path string
		want         int
	}{
		{"GET", "v1/fleet", http.StatusOK},
		{"GET", "v1/layers", http.StatusNotFound},
		{"POST", "v1/activate", http.StatusForbidden},
		{"GET", "v1/operator", http.StatusForbidden},
		{"POST", "v1/layers", http.StatusNotFound},
		{"PUT", "v1/activate", http.StatusMethodNotAllowed},
		{"DELETE", "v1/layers/web:1", http.StatusMethodNotAllowed},
		{"GET", "app.js", http.StatusOK},
	} {
		req, _ := http.NewRequest(c.method, url+c.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("%s %s on the web address: %d, want %d", c.method, c.path, resp.StatusCode, c.want)
		}
	}
}

// httpGet returns the body of a GET that must answer 200.
func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	return string(b)
}
