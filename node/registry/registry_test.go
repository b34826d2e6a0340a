package registry

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/multiformats/go-multihash"

	"github.com/p2pimg/p2pimg/chunk"
)

func TestLoadUpstreamsErrors(t *testing.T) {
	t.Parallel()
	cases := []struct{ name, text, want string }{
		{"plain http refused", `[registries."r:5000"]` + "\nendpoint = \"http://r:5000\"", "plain_http = true"},
		{"unknown key", `[registries."r"]` + "\nendpont = \"https://r\"", `unknown setting "registries.r.endpont"`},
		{"bad endpoint", `[registries."r"]` + "\nendpoint = \"ftp://r\"", "want https://HOST"},
		{"two defaults", `[registries."a"]` + "\ndefault = true\n" + `[registries."b"]` + "\ndefault = true", "one registry may be the default"},
		{"missing credentials", `[registries."r"]` + "\ncredentials = \"/nonexistent\"", "registry r: credentials"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			p := filepath.Join(t.TempDir(), "registries.toml")
			os.WriteFile(p, []byte(c.text), 0o600)
			_, err := LoadUpstreams(p)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("%s: got %v, want an error containing %q", c.text, err, c.want)
			}
		})
	}
	p := filepath.Join(t.TempDir(), "registries.toml")
	os.WriteFile(p, []byte(`[registries."docker.io"]`+"\nendpoint = \"https://registry-1.docker.io\"\ndefault = true\n"), 0o600)
	us, err := LoadUpstreams(p)
	if err != nil || us.defaultNS() != "docker.io" || us["docker.io"].URL() != "https://registry-1.docker.io" {
		t.Fatalf("good file: %v %v", us, err)
	}
}

func TestParseRange(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		hdr        string
		start, end int64
		ok, bad    bool
	}{
		{"", 0, 0, false, false},
		{"bytes=0-9", 0, 9, true, false},
		{"bytes=90-", 90, 99, true, false},
		{"bytes=-10", 90, 99, true, false},
		{"bytes=50-1000", 50, 99, true, false},
		{"bytes=100-", 0, 0, false, true},
		{"bytes=9-3", 0, 0, false, true},
		{"bytes=0-1,5-6", 0, 0, false, false},
	} {
		s, e, ok, err := parseRange(c.hdr, 100)
		if ok != c.ok || (err != nil) != c.bad || (ok && (s != c.start || e != c.end)) {
			t.Errorf("%q: %d-%d ok=%v err=%v", c.hdr, s, e, ok, err)
		}
	}
}

// A chunk being stored is read from Arrivals (a copy), by every writer's
// bytes until the last of them has stored it; waiters wake on both steps.
func TestArrivalsPending(t *testing.T) {
	t.Parallel()
	a := NewArrivals()
	one, err := chunk.Sum([]byte("chunk bytes"), multihash.SHA2_256)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := chunk.Sum([]byte("chunk bytes"), multihash.SHA2_256) // the same chunk from a second fetch, other memory
	if a.has(one.CID()) {
		t.Fatal("a chunk nobody stores is pending")
	}
	woken := a.wait()
	a.Storing([]chunk.Block{one})
	a.Storing([]chunk.Block{again})
	select {
	case <-woken:
	default:
		t.Fatal("Storing woke nobody")
	}
	buf := make([]byte, 0, 64)
	got, ok := a.read(one.CID(), buf)
	if !ok || string(got) != "chunk bytes" || &got[:1][0] != &buf[:1][0] {
		t.Fatalf("read: %q %v (want a copy into buf)", got, ok)
	}
	a.Stored([]chunk.Block{one})
	if got, ok := a.read(one.CID(), nil); !ok || string(got) != "chunk bytes" {
		t.Fatalf("after the first writer stored it, the second's copy: %q %v", got, ok)
	}
	woken = a.wait()
	a.Stored([]chunk.Block{again})
	if a.has(one.CID()) {
		t.Fatal("still pending after every writer stored it")
	}
	select {
	case <-woken:
	default:
		t.Fatal("Stored woke nobody")
	}
	var none *Arrivals
	none.Storing([]chunk.Block{one}) // nil-safe: a node without a mirror
	none.Stored([]chunk.Block{one})
}
