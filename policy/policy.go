package policy

import (
	"fmt"
	"path"
	"slices"
	"strings"
)

// Mode is how a host keeps its copy of a layer.
type Mode string

const (
	// Mirror keeps the host's copy exactly the published layer: local drift
	// in an exposed view is undone.
	Mirror Mode = "mirror"
	// OnActivate fetches the layer only when it is activated on the host.
	OnActivate Mode = "on-activate"
	// Manual leaves fetching and drift to the operator.
	Manual Mode = "manual"
)

// Selector picks hosts: "all", "none", "key=value" (a label), or a list of
// host ids separated by commas. The zero value selects none.
type Selector string

// Selects reports whether the selector picks the host.
func (s Selector) Selects(id string, labels map[string]string) bool {
	switch {
	case s == "" || s == "none":
		return false
	case s == "all":
		return true
	case strings.Contains(string(s), "="):
		k, v, _ := strings.Cut(string(s), "=")
		return labels[k] == v
	}
	return slices.Contains(strings.Split(string(s), ","), id)
}

// Window is a daily time window in minutes after midnight UTC, [Start, End);
// End < Start wraps past midnight.
type Window struct {
	Start, End int
}

// covers reports whether minute m of the day is in the window.
func (w Window) covers(m int) bool {
	if w.Start <= w.End {
		return m >= w.Start && m < w.End
	}
	return m >= w.Start || m < w.End
}

func (w Window) String() string {
	return fmt.Sprintf("%02d:%02d-%02d:%02d", w.Start/60, w.Start%60, w.End/60, w.End%60)
}

// Layer is the policy a publisher sets for a layer.
type Layer struct {
	Hold      Selector `json:"hold,omitempty"`       // hosts that should hold the layer even when it is not active
	MinCopies int      `json:"min_copies,omitempty"` // complete copies the cluster must keep
	Mode      Mode     `json:"mode,omitempty"`       // how holders keep it in sync (default on-activate)
	Locked    []string `json:"locked,omitempty"`     // paths no commit or host may change
	Activate  Selector `json:"activate,omitempty"`   // hosts the layer may be activated on ("" = all)
	Product   string   `json:"product,omitempty"`    // licensed product: activation needs a seat
	Bandwidth int64    `json:"bandwidth,omitempty"`  // bytes per second for background sync (0 = no cap)
	Windows   []Window `json:"windows,omitempty"`    // when background sync may run (none = any time)
	Lazy      bool     `json:"lazy,omitempty"`       // activations expose it before it is fetched (where a host serves FUSE)
}

// Host is the policy set for one host.
type Host struct {
	Quota     int64    `json:"quota,omitempty"`     // bytes of layers the host may hold (0 = no limit)
	Allow     []string `json:"allow,omitempty"`     // layer name patterns (path.Match) the host accepts; none = all
	Deny      []string `json:"deny,omitempty"`      // layer name patterns the host refuses
	Modes     []Mode   `json:"modes,omitempty"`     // sync modes the host accepts; none = all
	Bandwidth int64    `json:"bandwidth,omitempty"` // bytes per second for background sync (0 = no cap)
	Windows   []Window `json:"windows,omitempty"`   // when background sync may run (none = any time)
}

// Effective is what a host does about a layer.
type Effective struct {
	Hold        bool     `json:"hold"`         // fetch and keep it even when not active
	Mode        Mode     `json:"mode"`         //
	MayActivate bool     `json:"may_activate"` // an activation on this host is allowed
	Locked      []string `json:"locked,omitempty"`
	Product     string   `json:"product,omitempty"`
	Bandwidth   int64    `json:"bandwidth,omitempty"` // the lower of the two caps (0 = none)
	Windows     []Window `json:"windows,omitempty"`   // when both policies allow background sync (none = any time)
	Lazy        bool     `json:"lazy,omitempty"`      // activate before the fetch ends (the layer's choice)
}

// Conflict says why a host refuses to sync a layer: the layer's rule and
// the host's rule that disagree.
type Conflict struct {
	LayerRule string `json:"layer_rule"`
	HostRule  string `json:"host_rule"`
}

func (c *Conflict) Error() string {
	return fmt.Sprintf("layer policy %s conflicts with host policy %s", c.LayerRule, c.HostRule)
}

// Subject is the layer and host a resolution is about.
type Subject struct {
	Layer  string // NAME:TAG
	Size   int64  // bytes the layer holds
	Host   string // host id
	Labels map[string]string
	Held   int64 // bytes of other layers the host already holds
}

// Resolve combines the layer's policy (first) with the host's (second).
// It returns the effective policy, or the conflict that refuses syncing.
func Resolve(s Subject, l Layer, h Host) (Effective, *Conflict) {
	mode := l.Mode
	if mode == "" {
		mode = OnActivate
	}
	e := Effective{Mode: mode, Locked: l.Locked, Product: l.Product, Bandwidth: minCap(l.Bandwidth, h.Bandwidth), Lazy: l.Lazy}
	required := l.Hold.Selects(s.Host, s.Labels)
	activatable := l.Activate == "" || l.Activate.Selects(s.Host, s.Labels)

	if rule, refused := h.refuses(s.Layer); refused {
		if required {
			return Effective{}, &Conflict{"hold=" + string(l.Hold), rule}
		}
		return e, nil // the host neither holds nor activates it
	}
	e.Hold, e.MayActivate = required, activatable
	if !required && !activatable {
		return e, nil
	}
	if len(h.Modes) > 0 && !slices.Contains(h.Modes, mode) {
		return Effective{}, &Conflict{"mode=" + string(mode), "modes=" + joinModes(h.Modes)}
	}
	if required && h.Quota > 0 && s.Held+s.Size > h.Quota {
		return Effective{}, &Conflict{fmt.Sprintf("hold=%s (%d bytes)", l.Hold, s.Size), fmt.Sprintf("quota=%d (%d held)", h.Quota, s.Held)}
	}
	if required {
		w, ok := intersect(l.Windows, h.Windows)
		if !ok {
			return Effective{}, &Conflict{"windows=" + joinWindows(l.Windows), "windows=" + joinWindows(h.Windows)}
		}
		e.Windows = w
	}
	return e, nil
}

// refuses reports whether the host's allow and deny lists refuse the layer,
// and the rule that does.
func (h Host) refuses(layer string) (string, bool) {
	for _, p := range h.Deny {
		if ok, _ := path.Match(p, layer); ok {
			return "deny=" + p, true
		}
	}
	if len(h.Allow) == 0 {
		return "", false
	}
	for _, p := range h.Allow {
		if ok, _ := path.Match(p, layer); ok {
			return "", false
		}
	}
	return "allow=" + strings.Join(h.Allow, ","), true
}

func minCap(a, b int64) int64 {
	switch {
	case a == 0:
		return b
	case b == 0:
		return a
	}
	return min(a, b)
}

// intersect returns the minutes both window lists allow, as windows; a
// list with no windows allows every minute. ok is false when they share none.
func intersect(a, b []Window) ([]Window, bool) {
	if len(a) == 0 {
		return b, true
	}
	if len(b) == 0 {
		return a, true
	}
	var out []Window
	start := -1
	for m := 0; m <= 24*60; m++ {
		in := m < 24*60 && anyCovers(a, m) && anyCovers(b, m)
		switch {
		case in && start < 0:
			start = m
		case !in && start >= 0:
			out = append(out, Window{start, m % (24 * 60)})
			start = -1
		}
	}
	return out, len(out) > 0
}

// Allows reports whether windows (none = any time) allow minute m of the
// day (UTC).
func Allows(ws []Window, m int) bool { return len(ws) == 0 || anyCovers(ws, m) }

func anyCovers(ws []Window, m int) bool {
	for _, w := range ws {
		if w.covers(m) {
			return true
		}
	}
	return false
}

func joinModes(ms []Mode) string {
	s := make([]string, len(ms))
	for i, m := range ms {
		s[i] = string(m)
	}
	return strings.Join(s, ",")
}

func joinWindows(ws []Window) string {
	if len(ws) == 0 {
		return "any"
	}
	s := make([]string, len(ws))
	for i, w := range ws {
		s[i] = w.String()
	}
	return strings.Join(s, ",")
}

// Validate reports what is wrong with a layer policy.
func (l Layer) Validate() error {
	if err := validMode(l.Mode); err != nil {
		return err
	}
	if l.MinCopies < 0 || l.Bandwidth < 0 {
		return fmt.Errorf("layer policy: min copies %d and bandwidth %d must not be negative", l.MinCopies, l.Bandwidth)
	}
	for _, p := range l.Locked {
		if !strings.HasPrefix(p, "/") || path.Clean(p) != p {
			return fmt.Errorf("layer policy: locked path %q must be absolute and clean", p)
		}
	}
	return validWindows("layer policy", l.Windows)
}

// Validate reports what is wrong with a host policy.
func (h Host) Validate() error {
	for _, m := range h.Modes {
		if err := validMode(m); err != nil {
			return err
		}
	}
	if h.Quota < 0 || h.Bandwidth < 0 {
		return fmt.Errorf("host policy: quota %d and bandwidth %d must not be negative", h.Quota, h.Bandwidth)
	}
	for _, p := range append(append([]string{}, h.Allow...), h.Deny...) {
		if _, err := path.Match(p, ""); err != nil {
			return fmt.Errorf("host policy: layer pattern %q: %v", p, err)
		}
	}
	return validWindows("host policy", h.Windows)
}

func validMode(m Mode) error {
	switch m {
	case "", Mirror, OnActivate, Manual:
		return nil
	}
	return fmt.Errorf("sync mode %q: want mirror, on-activate or manual", m)
}

func validWindows(who string, ws []Window) error {
	for _, w := range ws {
		if w.Start < 0 || w.Start >= 24*60 || w.End < 0 || w.End >= 24*60 || w.Start == w.End {
			return fmt.Errorf("%s: window %d-%d: minutes after midnight in 0..1439, start != end", who, w.Start, w.End)
		}
	}
	return nil
}
