package registry

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
