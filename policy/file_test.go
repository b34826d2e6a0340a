package policy

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestParseFiles(t *testing.T) {
	t.Parallel()
	l, err := ParseLayer([]byte(`hold = "gpu=true"
min_copies = 2
mode = "mirror"
locked = ["/etc/app.conf"]
bandwidth = "100M"
windows = ["22:30-05:00"]
lazy = true`))
	if err != nil {
		t.Fatal(err)
	}
	if e, _ := Resolve(Subject{Layer: "x:1"}, l, Host{}); !e.Lazy {
		t.Fatal("lazy = true: the effective policy is not lazy")
	}
	if l.Hold != "gpu=true" || l.MinCopies != 2 || l.Mode != Mirror || !l.Lazy || l.Bandwidth != 100_000_000 || l.Windows[0] != (Window{22*60 + 30, 5 * 60}) {
		t.Fatalf("parsed %+v", l)
	}
	// The wire form round-trips.
	b, _ := json.Marshal(l)
	back, err := DecodeLayer(b)
	if err != nil || back.Windows[0] != l.Windows[0] || back.Mode != l.Mode || !back.Lazy {
		t.Fatalf("wire round trip: %v %+v", err, back)
	}
	h, err := ParseHost([]byte("quota = \"50GiB\"\ndeny = [\"test-*\"]\nmodes = [\"manual\"]"))
	if err != nil || h.Quota != 50<<30 || h.Deny[0] != "test-*" || h.Modes[0] != Manual {
		t.Fatalf("host: %v %+v", err, h)
	}
	bad := map[string]string{
		"unknown field":  `colour = "red"`,
		"bad mode":       `mode = "sometimes"`,
		"bad window":     `windows = ["25:00-26:00"]`,
		"relative lock":  `locked = ["etc/x"]`,
		"negative":       `min_copies = -1`,
		"bad size":       `bandwidth = "lots"`,
		"not toml":       `hold = `,
		"bad host mode":  `modes = ["x"]`,
		"bad pattern":    `deny = ["[a"]`,
		"host bad field": `qouta = 1`,
	}
	for name, text := range bad {
		_, errL := ParseLayer([]byte(text))
		_, errH := ParseHost([]byte(text))
		if errL == nil && errH == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := DecodeHost([]byte(`{"quota":1,"extra":2}`)); err == nil || !strings.Contains(err.Error(), "unknown field") {
		t.Fatalf("unknown wire field: %v", err)
	}
}

func FuzzPolicy(f *testing.F) {
	f.Add([]byte("hold = \"gpu=true\"\nmode = \"mirror\"\nwindows = [\"01:00-05:00\"]"))
	f.Add([]byte(`{"hold":"all","min_copies":2,"windows":["01:00-02:00"]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseLayer(b)
		ParseHost(b)
		if l, err := DecodeLayer(b); err == nil {
			again, _ := json.Marshal(l)
			back, err := DecodeLayer(again)
			twice, _ := json.Marshal(back)
			if err != nil || !bytes.Equal(again, twice) {
				t.Fatalf("layer policy does not round trip: %v", err)
			}
		}
		DecodeHost(b)
	})
}
