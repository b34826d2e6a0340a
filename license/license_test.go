package license

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

func issuer(t testing.TB) (ed25519.PrivateKey, []byte) {
	t.Helper()
	k, pemBytes, err := NewIssuerKey()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseIssuerKey(pemBytes)
	if err != nil || !back.Equal(k) {
		t.Fatalf("issuer key round trip: %v", err)
	}
	return k, pemBytes
}

func TestLicenseRoundTripAndRefusals(t *testing.T) {
	t.Parallel()
	k, _ := issuer(t)
	other, _ := issuer(t)
	trusted := [][]byte{k.Public().(ed25519.PublicKey)}
	l, err := Issue(k, "winsrv", 2, 4, t0, t0.Add(30*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse([]byte(l.Text()))
	if err != nil {
		t.Fatal(err)
	}
	if back.ID() != l.ID() || back.Seats != 2 || back.Share != 4 || back.Product != "winsrv" {
		t.Fatalf("round trip changed the licence: %+v", back)
	}
	if err := back.Verify(trusted, t0.Add(time.Hour)); err != nil {
		t.Fatalf("good licence refused: %v", err)
	}

	edited := *l
	edited.Seats = 200
	forged, _ := Issue(other, "winsrv", 2, 4, t0, time.Time{})
	cases := []struct {
		name string
		lic  *License
		now  time.Time
		want error
	}{
		{"edited seats", &edited, t0, ErrBadSignature},
		{"unknown issuer", forged, t0, ErrUnknownIssuer},
		{"expired", l, t0.Add(31 * 24 * time.Hour), ErrExpired},
	}
	for _, c := range cases {
		err := c.lic.Verify(trusted, c.now)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
	// Forged issuer field with the old signature: bad signature.
	swapped := *forged
	swapped.Issuer = trusted[0]
	if err := swapped.Verify(trusted, t0); !errors.Is(err, ErrBadSignature) {
		t.Errorf("swapped issuer: got %v", err)
	}
}

func TestParseRefusesMalformed(t *testing.T) {
	t.Parallel()
	k, _ := issuer(t)
	l, _ := Issue(k, "p", 1, 1, t0, time.Time{})
	good := l.Text()
	bad := map[string]string{
		"empty":         "",
		"not pem":       "hello",
		"wrong type":    strings.Replace(good, "P2PIMG LICENSE", "CERTIFICATE", 2),
		"trailing text": good + "more\n",
		"bit flip":      flipPEM(good),
	}
	trusted := [][]byte{k.Public().(ed25519.PublicKey)}
	for name, text := range bad {
		if l, err := Parse([]byte(text)); err == nil {
			if err := l.Verify(trusted, t0); err == nil {
				t.Errorf("%s: parsed and verified", name)
			}
		}
	}
	if _, err := Issue(k, "bad product!", 1, 1, t0, time.Time{}); err == nil {
		t.Error("bad product name issued")
	}
	if _, err := Issue(k, "p", 0, 1, t0, time.Time{}); err == nil {
		t.Error("zero seats issued")
	}
	if _, err := Issue(k, "p", 1, 1, t0, t0.Add(-time.Hour)); err == nil {
		t.Error("expiry before issue accepted")
	}
}

func flipPEM(s string) string {
	lines := strings.Split(s, "\n")
	b := []byte(lines[2])
	if b[5] == 'A' {
		b[5] = 'B'
	} else {
		b[5] = 'A'
	}
	lines[2] = string(b)
	return strings.Join(lines, "\n")
}

type fixture struct {
	t     *testing.T
	tab   Table
	rules Rules
	index uint64
	key   ed25519.PrivateKey
}

func newFixture(t *testing.T, seats, share int) *fixture {
	k, _ := issuer(t)
	f := &fixture{t: t, key: k, rules: Rules{TTL: 30 * time.Second, Margin: 5 * time.Second, Trusted: [][]byte{k.Public().(ed25519.PublicKey)}}}
	l, err := Issue(k, "p", seats, share, t0, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if r := f.apply(Command{Op: OpInstall, Now: t0.UnixNano(), License: l.Marshal()}); r.Code != "" {
		t.Fatal(r.Err)
	}
	return f
}

func (f *fixture) apply(c Command) Result {
	f.index++
	// Every command goes through the log form, as on a keeper.
	back, err := UnmarshalCommand(MarshalCommand(c))
	if err != nil {
		f.t.Fatal(err)
	}
	return f.tab.Apply(f.index, back, f.rules)
}

func (f *fixture) claim(host, consumer string, at time.Duration) Result {
	return f.apply(Command{Op: OpClaim, Now: t0.Add(at).UnixNano(), Host: host, Product: "p", Consumer: consumer})
}

func TestSeatTable(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 2, 2)
	a1 := f.claim("A", "vm1", 0)
	if a1.Seat == nil || a1.Seat.N != 1 {
		t.Fatalf("first claim: %+v", a1)
	}
	// A's second VM shares A's seat (share 2); the third needs a new seat.
	if r := f.claim("A", "vm2", time.Second); r.Seat == nil || r.Seat.Token != a1.Seat.Token {
		t.Fatalf("shared claim: %+v", r)
	} else {
		// A result shares nothing with the table.
		r.Seat.Consumers[0] = "changed"
		if s, _ := f.tab.Lookup(a1.Seat.Token); s.Consumers[0] != "vm1" {
			t.Fatal("changing a result changed the table")
		}
	}
	if r := f.claim("A", "vm1", time.Second); r.Seat == nil || r.Seat.Token != a1.Seat.Token || len(r.Seat.Consumers) != 2 {
		t.Fatalf("repeated claim is not idempotent: %+v", r)
	}
	b1 := f.claim("B", "vm1", 2*time.Second)
	if b1.Seat == nil || b1.Seat.N != 2 || b1.Seat.Token <= a1.Seat.Token {
		t.Fatalf("B claim: %+v", b1)
	}
	if r := f.claim("A", "vm3", 3*time.Second); !errors.Is(r.Error(), ErrNoSeat) {
		t.Fatalf("third seat granted: %+v", r)
	}
	if r := f.claim("C", "vm1", 3*time.Second); r.Code != CodeNoSeat {
		t.Fatalf("C got a seat: %+v", r)
	}
	// A renews; B does not.
	if r := f.apply(Command{Op: OpRenew, Now: t0.Add(20 * time.Second).UnixNano(), Host: "A", Tokens: []uint64{a1.Seat.Token, 999}}); len(r.Lost) != 1 || r.Lost[0] != 999 {
		t.Fatalf("renew: %+v", r)
	}
	// B's lease ends at 32 s; the seat stays B's until 32 + 5 s.
	if r := f.claim("C", "vm1", 36*time.Second); r.Code != CodeNoSeat {
		t.Fatalf("seat freed inside the margin: %+v", r)
	}
	c1 := f.claim("C", "vm1", 37*time.Second)
	if c1.Seat == nil || c1.Seat.N != 2 || len(c1.Freed) != 1 || c1.Freed[0].Host != "B" {
		t.Fatalf("C after B's lease + margin: %+v", c1)
	}
	// B comes back with its old token: lost, and not current.
	if r := f.apply(Command{Op: OpRenew, Now: t0.Add(38 * time.Second).UnixNano(), Host: "B", Tokens: []uint64{b1.Seat.Token}}); len(r.Lost) != 1 {
		t.Fatalf("stale renewal accepted: %+v", r)
	}
	if _, err := f.tab.Current(b1.Seat.Token, t0.Add(38*time.Second).UnixNano()); err == nil {
		t.Fatal("stale token is current")
	}
	if _, err := f.tab.Current(c1.Seat.Token, t0.Add(38*time.Second).UnixNano()); err != nil {
		t.Fatal(err)
	}
	// A restarted C (a new session) cannot renew or release what its
	// previous run holds: that comes back only when the lease ends.
	if r := f.apply(Command{Op: OpRenew, Now: t0.Add(38 * time.Second).UnixNano(), Host: "C", Session: "run2", Tokens: []uint64{c1.Seat.Token}}); len(r.Lost) != 1 {
		t.Fatalf("a new session renewed the old one's seat: %+v", r)
	}
	if r := f.apply(Command{Op: OpRelease, Host: "C", Session: "run2", Tokens: []uint64{c1.Seat.Token}}); len(r.Freed) != 0 {
		t.Fatalf("a new session released the old one's seat: %+v", r)
	}
	// Another host cannot renew or release C's seat.
	f.apply(Command{Op: OpRelease, Host: "A", Tokens: []uint64{c1.Seat.Token}})
	if _, ok := f.tab.Lookup(c1.Seat.Token); !ok {
		t.Fatal("A released C's seat")
	}
	// A releases its VMs one by one; the seat goes with the last.
	f.apply(Command{Op: OpRelease, Host: "A", Product: "p", Consumer: "vm1"})
	if _, ok := f.tab.Lookup(a1.Seat.Token); !ok {
		t.Fatal("seat freed while vm2 still uses it")
	}
	if r := f.apply(Command{Op: OpRelease, Host: "A", Product: "p", Consumer: "vm2"}); len(r.Freed) != 1 {
		t.Fatalf("last release: %+v", r)
	}
	if r := f.claim("D", "x", 39*time.Second); r.Seat == nil || r.Seat.N != 1 {
		t.Fatalf("freed seat not granted again: %+v", r)
	}
	// Snapshot round trip keeps the table.
	back, err := UnmarshalTable(MarshalTable(&f.tab))
	if err != nil || len(back.Seats) != 2 || back.Index != f.tab.Index {
		t.Fatalf("table round trip: %v %+v", err, back)
	}
}

func TestInstallRules(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	old := f.tab.Licenses["p"]
	newer, _ := Issue(f.key, "p", 5, 1, t0.Add(time.Hour), time.Time{})
	now := t0.Add(2 * time.Hour).UnixNano()
	if r := f.apply(Command{Op: OpInstall, Now: now, License: newer.Marshal()}); r.Code != "" {
		t.Fatal(r.Err)
	}
	if r := f.apply(Command{Op: OpInstall, Now: now, License: old.Marshal()}); r.Code != CodeRefused || !strings.Contains(r.Err, "replay") {
		t.Fatalf("older licence installed again: %+v", r)
	}
	if r := f.apply(Command{Op: OpInstall, Now: now, License: newer.Marshal()}); r.Code != "" {
		t.Fatalf("re-install of the same licence is not idempotent: %+v", r)
	}
	if f.tab.Licenses["p"].Seats != 5 {
		t.Fatal("newer licence not in force")
	}
	if r := f.claim("A", "v", 0); r.Seat == nil {
		t.Fatal(r.Err)
	}
	if r := f.apply(Command{Op: OpClaim, Now: now, Host: "A", Product: "q", Consumer: "v"}); r.Code != CodeUnknownProduct {
		t.Fatalf("claim of an unknown product: %+v", r)
	}
	exp, _ := Issue(f.key, "e", 1, 1, t0, t0.Add(time.Hour))
	if r := f.apply(Command{Op: OpInstall, Now: now, License: exp.Marshal()}); r.Code != CodeRefused || !strings.Contains(r.Err, "expired") {
		t.Fatalf("expired licence installed: %+v", r)
	}
}

// TestLeasesNeverOverlap drives the table with random claims, renewals,
// releases and silent holder deaths, with keepers stamping a clock up to
// Margin/2 ahead or behind the holders' and messages delayed at random, and
// checks with CheckIntervals that the holders' own lease intervals never
// exceed the seats.
func TestLeasesNeverOverlap(t *testing.T) {
	t.Parallel()
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 7))
		f := newFixture(t, 2, 1)
		type held struct {
			token    uint64
			from, to time.Time
		}
		holders := map[string]*held{}
		// A holder that dies comes back as a new session of its host.
		session := map[string]int{}
		var ivs []Interval
		now := t0
		for range 2000 {
			now = now.Add(time.Duration(rng.IntN(3000)) * time.Millisecond)
			h := string(rune('A' + rng.IntN(6)))
			sent := now
			skew := time.Duration(rng.IntN(int(f.rules.Margin))) - f.rules.Margin/2
			// The keeper applies the command d1 after it was sent and reads
			// its own (skewed) clock; the answer arrives d2 later.
			d1 := time.Duration(rng.IntN(500)) * time.Millisecond
			stamp := sent.Add(d1 + skew)
			recv := sent.Add(d1 + time.Duration(rng.IntN(500))*time.Millisecond)
			cur := holders[h]
			switch op := rng.IntN(10); {
			case cur == nil && op < 5:
				r := f.apply(Command{Op: OpClaim, Now: stamp.UnixNano(), Host: h, Session: fmt.Sprint(session[h]), Product: "p", Consumer: "vm"})
				if r.Seat != nil {
					end := f.rules.LeaseEnd(sent)
					holders[h] = &held{r.Seat.Token, recv, end}
				}
			case cur != nil && op < 7:
				r := f.apply(Command{Op: OpRenew, Now: stamp.UnixNano(), Host: h, Session: fmt.Sprint(session[h]), Tokens: []uint64{cur.token}})
				if len(r.Lost) == 0 && f.rules.LeaseEnd(sent).After(cur.to) {
					if recv.After(cur.to) { // lapsed in between: a new interval
						ivs = append(ivs, Interval{"p", h, cur.token, cur.from, cur.to})
						cur.from = recv
					}
					cur.to = f.rules.LeaseEnd(sent)
				}
			case cur != nil && op < 8:
				// Holder stops treating it as valid, then releases.
				ivs = append(ivs, Interval{"p", h, cur.token, cur.from, minTime(cur.to, now)})
				f.apply(Command{Op: OpRelease, Now: stamp.UnixNano(), Host: h, Session: fmt.Sprint(session[h]), Product: "p", Consumer: "vm"})
				delete(holders, h)
			case cur != nil && op < 9:
				// Holder dies: valid until its lease ends on its own.
				ivs = append(ivs, Interval{"p", h, cur.token, cur.from, cur.to})
				delete(holders, h)
				session[h]++
			}
			if rng.IntN(4) == 0 {
				f.apply(Command{Op: OpExpire, Now: stamp.UnixNano()})
			}
		}
		for h, cur := range holders {
			ivs = append(ivs, Interval{"p", h, cur.token, cur.from, cur.to})
		}
		if err := CheckIntervals(ivs, map[string]int{"p": 2}); err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func TestCheckIntervalsFindsOverlap(t *testing.T) {
	t.Parallel()
	s := func(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }
	ok := []Interval{
		{"p", "A", 1, s(0), s(10)},
		{"p", "A", 1, s(9), s(20)}, // renewal of the same grant
		{"p", "B", 2, s(20), s(30)},
		{"p", "C", 3, s(0), s(30)},
	}
	if err := CheckIntervals(ok, map[string]int{"p": 2}); err != nil {
		t.Fatal(err)
	}
	bad := append(ok, Interval{"p", "D", 4, s(25), s(26)})
	err := CheckIntervals(bad, map[string]int{"p": 2})
	if err == nil || !strings.Contains(err.Error(), "D token 4") {
		t.Fatalf("overlap not found: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	k, _ := issuer(f)
	l, _ := Issue(k, "p", 1, 1, t0, time.Time{})
	f.Add([]byte(l.Text()))
	f.Add(l.Marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		if l, err := Parse(b); err == nil {
			if again, err := Parse([]byte(l.Text())); err != nil || again.ID() != l.ID() {
				t.Fatalf("parsed licence does not round trip: %v", err)
			}
		}
		if l, err := Unmarshal(b); err == nil && string(l.Marshal()) != string(b) {
			t.Fatal("non-canonical licence accepted")
		}
	})
}

func FuzzDecodeSeats(f *testing.F) {
	f.Add(MarshalCommand(Command{Op: OpClaim, Now: 1, Host: "h", Product: "p", Consumer: "c"}))
	f.Add(MarshalTable(&Table{Index: 3, Seats: []Seat{{Product: "p", N: 1, Host: "h", Consumers: []string{"c"}, Token: 2}}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if c, err := UnmarshalCommand(b); err == nil {
			var tab Table
			tab.Apply(1, c, Rules{TTL: time.Second}) // must not panic
		}
		if tab, err := UnmarshalTable(b); err == nil {
			tab.Clone()
		}
	})
}
