package policy

import (
	"reflect"
	"strings"
	"testing"
)

const me = "12D3KooWme"

var gpu = map[string]string{"gpu": "true"}

func TestResolve(t *testing.T) {
	t.Parallel()
	night := Window{22 * 60, 6 * 60} // wraps past midnight
	morning := Window{5 * 60, 9 * 60}
	noon := Window{12 * 60, 13 * 60}
	subject := Subject{Layer: "web:2", Size: 100, Host: me, Labels: gpu}
	for _, tc := range []struct {
		name     string
		s        Subject
		l        Layer
		h        Host
		want     Effective
		conflict string // substring of the conflict, "" for none
	}{
		{"defaults", subject, Layer{}, Host{},
			Effective{Mode: OnActivate, MayActivate: true}, ""},
		{"hold all", subject, Layer{Hold: "all", Mode: Mirror}, Host{},
			Effective{Hold: true, Mode: Mirror, MayActivate: true}, ""},
		{"hold by label", subject, Layer{Hold: "gpu=true"}, Host{},
			Effective{Hold: true, Mode: OnActivate, MayActivate: true}, ""},
		{"hold other label", subject, Layer{Hold: "gpu=false"}, Host{},
			Effective{Mode: OnActivate, MayActivate: true}, ""},
		{"hold by id", subject, Layer{Hold: Selector("a," + me)}, Host{},
			Effective{Hold: true, Mode: OnActivate, MayActivate: true}, ""},
		{"hold none", subject, Layer{Hold: "none"}, Host{},
			Effective{Mode: OnActivate, MayActivate: true}, ""},
		{"activation not allowed here", subject, Layer{Activate: "gpu=false"}, Host{},
			Effective{Mode: OnActivate}, ""},
		// deny and allow lists against a layer that requires the host, or not
		{"required but denied", subject, Layer{Hold: "all"}, Host{Deny: []string{"web:*"}},
			Effective{}, "hold=all conflicts with host policy deny=web:*"},
		{"denied, not required", subject, Layer{}, Host{Deny: []string{"web:*"}},
			Effective{Mode: OnActivate}, ""},
		{"deny other layers", subject, Layer{Hold: "all"}, Host{Deny: []string{"db:*"}},
			Effective{Hold: true, Mode: OnActivate, MayActivate: true}, ""},
		{"required, not on allow list", subject, Layer{Hold: "all"}, Host{Allow: []string{"db:*"}},
			Effective{}, "allow=db:*"},
		{"required and allowed", subject, Layer{Hold: "all"}, Host{Allow: []string{"db:*", "web:?"}},
			Effective{Hold: true, Mode: OnActivate, MayActivate: true}, ""},
		// sync modes
		{"mode refused", subject, Layer{Hold: "all", Mode: Mirror}, Host{Modes: []Mode{OnActivate, Manual}},
			Effective{}, "mode=mirror conflicts with host policy modes=on-activate,manual"},
		{"mode accepted", subject, Layer{Hold: "all", Mode: Mirror}, Host{Modes: []Mode{Mirror}},
			Effective{Hold: true, Mode: Mirror, MayActivate: true}, ""},
		{"mode refused for activation only", subject, Layer{Mode: Mirror}, Host{Modes: []Mode{Manual}},
			Effective{}, "mode=mirror"},
		{"mode irrelevant when neither held nor activatable", subject, Layer{Mode: Mirror, Activate: "none"}, Host{Modes: []Mode{Manual}},
			Effective{Mode: Mirror}, ""},
		// quota
		{"quota fits", Subject{Layer: "web:2", Size: 100, Host: me, Held: 900}, Layer{Hold: "all"}, Host{Quota: 1000},
			Effective{Hold: true, Mode: OnActivate, MayActivate: true}, ""},
		{"quota too small", Subject{Layer: "web:2", Size: 100, Host: me, Held: 901}, Layer{Hold: "all"}, Host{Quota: 1000},
			Effective{}, "quota=1000 (901 held)"},
		{"quota not applied to activation-only", Subject{Layer: "web:2", Size: 5000, Host: me}, Layer{}, Host{Quota: 1000},
			Effective{Mode: OnActivate, MayActivate: true}, ""},
		// windows
		{"windows overlap", subject, Layer{Hold: "all", Windows: []Window{night}}, Host{Windows: []Window{morning}},
			Effective{Hold: true, Mode: OnActivate, MayActivate: true, Windows: []Window{{5 * 60, 6 * 60}}}, ""},
		{"windows disjoint", subject, Layer{Hold: "all", Windows: []Window{noon}}, Host{Windows: []Window{night}},
			Effective{}, "windows=12:00-13:00 conflicts with host policy windows=22:00-06:00"},
		{"only the host has windows", subject, Layer{Hold: "all"}, Host{Windows: []Window{noon}},
			Effective{Hold: true, Mode: OnActivate, MayActivate: true, Windows: []Window{noon}}, ""},
		{"only the layer has windows", subject, Layer{Hold: "all", Windows: []Window{night}}, Host{},
			Effective{Hold: true, Mode: OnActivate, MayActivate: true, Windows: []Window{night}}, ""},
		// bandwidth and the rest are carried through
		{"bandwidth: lower cap wins", subject, Layer{Hold: "all", Bandwidth: 100, Product: "db", Locked: []string{"/etc"}}, Host{Bandwidth: 50},
			Effective{Hold: true, Mode: OnActivate, MayActivate: true, Bandwidth: 50, Product: "db", Locked: []string{"/etc"}}, ""},
		{"bandwidth: one cap", subject, Layer{Hold: "all"}, Host{Bandwidth: 70},
			Effective{Hold: true, Mode: OnActivate, MayActivate: true, Bandwidth: 70}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, c := Resolve(tc.s, tc.l, tc.h)
			if tc.conflict != "" {
				if c == nil || !strings.Contains(c.Error(), tc.conflict) {
					t.Fatalf("conflict %v, want one with %q", c, tc.conflict)
				}
				return
			}
			if c != nil {
				t.Fatalf("unexpected conflict: %v", c)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err error
		ok  bool
	}{
		{Layer{Mode: Mirror, Windows: []Window{{60, 120}}, Locked: []string{"/etc/ssl"}}.Validate(), true},
		{Layer{Mode: "sometimes"}.Validate(), false},
		{Layer{MinCopies: -1}.Validate(), false},
		{Layer{Locked: []string{"etc"}}.Validate(), false},
		{Layer{Windows: []Window{{0, 24 * 60}}}.Validate(), false},
		{Host{Modes: []Mode{Manual}, Deny: []string{"web:*"}}.Validate(), true},
		{Host{Deny: []string{"web:["}}.Validate(), false},
		{Host{Quota: -5}.Validate(), false},
		{Host{Windows: []Window{{10, 10}}}.Validate(), false},
	} {
		if (tc.err == nil) != tc.ok {
			t.Errorf("got %v, want ok=%v", tc.err, tc.ok)
		}
	}
}
