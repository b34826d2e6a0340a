package policy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/dustin/go-humanize"
)

// MarshalText writes a window as HH:MM-HH:MM (UTC).
func (w Window) MarshalText() ([]byte, error) { return []byte(w.String()), nil }

// UnmarshalText reads HH:MM-HH:MM (UTC).
func (w *Window) UnmarshalText(b []byte) error {
	a, z, ok := strings.Cut(string(b), "-")
	if !ok {
		return fmt.Errorf("window %q: want HH:MM-HH:MM (UTC)", b)
	}
	var err error
	if w.Start, err = minute(a); err == nil {
		w.End, err = minute(z)
	}
	if err != nil {
		return fmt.Errorf("window %q: %v", b, err)
	}
	return nil
}

func minute(s string) (int, error) {
	t, err := time.Parse("15:04", strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("%q is not HH:MM", s)
	}
	return t.Hour()*60 + t.Minute(), nil
}

// size is a byte count written as a number or with a unit ("50G", "100MB").
type size int64

func (s *size) UnmarshalTOML(v any) error {
	switch x := v.(type) {
	case int64:
		*s = size(x)
	case string:
		n, err := humanize.ParseBytes(x)
		if err != nil {
			return fmt.Errorf("size %q: %v", x, err)
		}
		*s = size(n)
	default:
		return fmt.Errorf("size %v: want a number of bytes or a string such as \"50G\"", v)
	}
	return nil
}

type layerFile struct {
	Hold      string   `toml:"hold"`
	MinCopies int      `toml:"min_copies"`
	Mode      string   `toml:"mode"`
	Locked    []string `toml:"locked"`
	Activate  string   `toml:"activate"`
	Product   string   `toml:"product"`
	Bandwidth size     `toml:"bandwidth"`
	Windows   []Window `toml:"windows"`
	Lazy      bool     `toml:"lazy"`
}

type hostFile struct {
	Quota     size     `toml:"quota"`
	Allow     []string `toml:"allow"`
	Deny      []string `toml:"deny"`
	Modes     []string `toml:"modes"`
	Bandwidth size     `toml:"bandwidth"`
	Windows   []Window `toml:"windows"`
}

func decodeTOML(b []byte, v any, what string) error {
	md, err := toml.Decode(string(b), v)
	if err != nil {
		return fmt.Errorf("%s: %v", what, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return fmt.Errorf("%s: unknown field %q", what, und[0].String())
	}
	return nil
}

// ParseLayer reads a layer policy file (TOML):
//
//	hold = "gpu=true"          # all, none, key=value or ID,ID,...
//	min_copies = 2
//	mode = "mirror"            # mirror, on-activate (default) or manual
//	locked = ["/etc/app.conf"]
//	activate = "all"
//	bandwidth = "100M"         # bytes per second
//	windows = ["01:00-05:00"]  # UTC
//	lazy = true                # activations go live before the fetch ends
func ParseLayer(b []byte) (Layer, error) {
	var f layerFile
	if err := decodeTOML(b, &f, "layer policy"); err != nil {
		return Layer{}, err
	}
	l := Layer{Hold: Selector(f.Hold), MinCopies: f.MinCopies, Mode: Mode(f.Mode), Locked: f.Locked,
		Activate: Selector(f.Activate), Product: f.Product, Bandwidth: int64(f.Bandwidth), Windows: f.Windows, Lazy: f.Lazy}
	return l, l.Validate()
}

// ParseHost reads a host policy file (TOML):
//
//	quota = "500G"
//	allow = ["base/*", "web:*"]
//	deny = ["test-*"]
//	modes = ["on-activate", "manual"]  # e.g. a host that refuses mirror
//	bandwidth = "50M"
//	windows = ["22:00-06:00"]
func ParseHost(b []byte) (Host, error) {
	var f hostFile
	if err := decodeTOML(b, &f, "host policy"); err != nil {
		return Host{}, err
	}
	h := Host{Quota: int64(f.Quota), Allow: f.Allow, Deny: f.Deny, Bandwidth: int64(f.Bandwidth), Windows: f.Windows}
	for _, m := range f.Modes {
		h.Modes = append(h.Modes, Mode(m))
	}
	return h, h.Validate()
}

// DecodeLayer reads the wire form (JSON) of a layer policy strictly.
func DecodeLayer(b []byte) (Layer, error) {
	var l Layer
	if err := strictJSON(b, &l); err != nil {
		return l, fmt.Errorf("layer policy: %v", err)
	}
	return l, l.Validate()
}

// DecodeHost reads the wire form (JSON) of a host policy strictly.
func DecodeHost(b []byte) (Host, error) {
	var h Host
	if err := strictJSON(b, &h); err != nil {
		return h, fmt.Errorf("host policy: %v", err)
	}
	return h, h.Validate()
}

func strictJSON(b []byte, v any) error {
	if len(b) > 64<<10 {
		return fmt.Errorf("%d bytes is too large", len(b))
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}
