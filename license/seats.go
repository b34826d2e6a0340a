package license

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// Rules are the lease rules. Every keeper and every holder of one cluster
// applies the same ones (they come from the cluster file).
type Rules struct {
	// TTL is a lease's length, from the keeper leader's stamp on the claim
	// or renewal.
	TTL time.Duration
	// Margin: keepers free a seat only at lease end + Margin. It covers the
	// clock difference between keepers (a new leader may run ahead).
	Margin time.Duration
	// Trusted are the issuer public keys whose licences are accepted.
	Trusted [][]byte
}

// Drift is what a holder takes off its lease, measured on its own
// monotonic clock, for its clock running slower than the keepers'.
func (r Rules) Drift() time.Duration { return r.TTL / 10 }

// LeaseEnd is when a holder stops treating a grant as valid: TTL minus the
// drift margin after it sent the claim or renewal that was granted. The
// keeper stamped the grant no earlier than sent, and frees the seat no
// earlier than its stamp + TTL + Margin, so the holder's validity always
// ends first.
func (r Rules) LeaseEnd(sent time.Time) time.Time { return sent.Add(r.TTL - r.Drift()) }

// Check reports whether the rules make sense.
func (r Rules) Check() error {
	if r.TTL < time.Second {
		return fmt.Errorf("seat ttl %v: want at least 1s", r.TTL)
	}
	if r.Margin < 0 {
		return fmt.Errorf("seat margin %v: must not be negative", r.Margin)
	}
	return nil
}

// Seat is one held seat: a host, the consumers (VMs) sharing it there, the
// fencing token of the grant and the lease end on the keepers' clock.
type Seat struct {
	Product   string   `cbor:"1,keyasint" json:"product"`
	N         int      `cbor:"2,keyasint" json:"seat"`
	Host      string   `cbor:"3,keyasint" json:"host"`
	Consumers []string `cbor:"4,keyasint" json:"consumers"`
	// Session is the holder daemon's run: a restarted daemon is a new
	// holder and cannot pick up (or renew) what its previous run held.
	Session string `cbor:"7,keyasint" json:"session"`
	// Token is the Raft index of the grant: every later grant of any seat
	// has a larger one, so a stale holder can be fenced off.
	Token   uint64 `cbor:"5,keyasint" json:"token"`
	Expires int64  `cbor:"6,keyasint" json:"expires_unix_nano"`
}

// Table is the seat table: the installed licences and the held seats. It is
// the state of the keepers' Raft group; Apply is its only writer.
type Table struct {
	Index    uint64              `cbor:"1,keyasint" json:"index"`
	Licenses map[string]*License `cbor:"2,keyasint" json:"licenses"`
	Seats    []Seat              `cbor:"3,keyasint" json:"seats"`
	// Conf is the log index of the keepers' configuration in force (who
	// the keepers are): a keeper change names the one it applies to.
	Conf uint64 `cbor:"4,keyasint,omitempty" json:"conf,omitempty"`
}

// Op is a seat table command.
type Op uint8

// The seat table commands.
const (
	OpInstall Op = iota + 1
	OpClaim
	OpRenew
	OpRelease
	OpExpire
)

// Command is one entry of the keepers' log. Now is the leader's clock when
// it proposed the command: Apply never reads a clock itself.
type Command struct {
	Op       Op       `cbor:"1,keyasint"`
	Now      int64    `cbor:"2,keyasint"`
	Host     string   `cbor:"3,keyasint,omitempty"`
	Product  string   `cbor:"4,keyasint,omitempty"`
	Consumer string   `cbor:"5,keyasint,omitempty"`
	Tokens   []uint64 `cbor:"6,keyasint,omitempty"`
	License  []byte   `cbor:"7,keyasint,omitempty"`
	Session  string   `cbor:"8,keyasint,omitempty"`
}

// Result codes.
const (
	CodeNoSeat         = "no_seat"
	CodeUnknownProduct = "unknown_product"
	CodeRefused        = "refused"
)

// Result is what Apply decided.
type Result struct {
	Code  string   `cbor:"1,keyasint,omitempty"` // "" when done
	Err   string   `cbor:"2,keyasint,omitempty"`
	Seat  *Seat    `cbor:"3,keyasint,omitempty"` // claim: the granted seat
	Lost  []uint64 `cbor:"4,keyasint,omitempty"` // renew: tokens no longer held
	Freed []Seat   `cbor:"5,keyasint,omitempty"` // seats freed by this command
}

// Error is a Result that refused something.
func (r Result) Error() error {
	if r.Code == "" {
		return nil
	}
	return &RefusedError{Code: r.Code, Msg: r.Err}
}

// RefusedError is a refused seat command.
type RefusedError struct{ Code, Msg string }

func (e *RefusedError) Error() string { return e.Msg }

// ErrNoSeat matches a RefusedError with CodeNoSeat.
var ErrNoSeat = errors.New("no free seat")

// Is lets errors.Is(err, ErrNoSeat) work.
func (e *RefusedError) Is(target error) bool { return target == ErrNoSeat && e.Code == CodeNoSeat }

// MarshalCommand and UnmarshalCommand are the log entry form.
func MarshalCommand(c Command) []byte {
	b, _ := encMode.Marshal(c)
	return b
}

// UnmarshalCommand decodes a log entry strictly.
func UnmarshalCommand(b []byte) (Command, error) {
	var c Command
	if err := decodeCanonical(b, &c); err != nil {
		return c, fmt.Errorf("seat command: %w", err)
	}
	return c, nil
}

// MarshalTable and UnmarshalTable are the snapshot and gossip form.
func MarshalTable(t *Table) []byte {
	b, _ := encMode.Marshal(t)
	return b
}

// UnmarshalTable decodes a table strictly and checks every licence's fields.
func UnmarshalTable(b []byte) (*Table, error) {
	var t Table
	if err := decodeCanonical(b, &t); err != nil {
		return nil, fmt.Errorf("seat table: %w", err)
	}
	for p, l := range t.Licenses {
		if l == nil || l.check() != nil || l.Product != p {
			return nil, fmt.Errorf("seat table: licence for %q is malformed", p)
		}
	}
	return &t, nil
}

// CheckConsumer reports whether s is a valid consumer id.
func CheckConsumer(s string) error {
	if len(s) == 0 || len(s) > 128 {
		return fmt.Errorf("consumer %q: want 1-128 characters", s)
	}
	for _, r := range s {
		if r < 0x21 || r > 0x7e {
			return fmt.Errorf("consumer %q: only printable ASCII without spaces", s)
		}
	}
	return nil
}

func refuse(code, format string, a ...any) Result {
	return Result{Code: code, Err: fmt.Sprintf(format, a...)}
}

// Apply runs one committed command. It is deterministic: the same commands
// in the same order give the same table on every keeper.
func (t *Table) Apply(index uint64, c Command, r Rules) Result {
	if t.Licenses == nil {
		t.Licenses = map[string]*License{}
	}
	t.Index = index
	switch c.Op {
	case OpInstall:
		return t.install(c, r)
	case OpClaim:
		return t.claim(index, c, r)
	case OpRenew:
		return t.renew(c, r)
	case OpRelease:
		return t.release(c)
	case OpExpire:
		return Result{Freed: t.expire("", c.Now, r)}
	}
	return refuse(CodeRefused, "unknown seat command %d", c.Op)
}

func (t *Table) install(c Command, r Rules) Result {
	l, err := Unmarshal(c.License)
	if err != nil {
		return refuse(CodeRefused, "%v", err)
	}
	if err := l.Verify(r.Trusted, time.Unix(0, c.Now)); err != nil {
		return refuse(CodeRefused, "%v", err)
	}
	if old := t.Licenses[l.Product]; old != nil {
		if old.ID() == l.ID() {
			return Result{}
		}
		if l.Issued < old.Issued || (l.Issued == old.Issued && l.ID() < old.ID()) {
			return refuse(CodeRefused, "licence %s for %s is older than the installed licence %s (issued %s): refused as a replay",
				l.ID(), l.Product, old.ID(), time.Unix(old.Issued, 0).UTC().Format(time.RFC3339))
		}
	}
	t.Licenses[l.Product] = l
	return Result{}
}

func (t *Table) claim(index uint64, c Command, r Rules) Result {
	l := t.Licenses[c.Product]
	if l == nil {
		return refuse(CodeUnknownProduct, "no licence for product %q is installed", c.Product)
	}
	if l.Expires != 0 && c.Now >= l.Expires*int64(time.Second) {
		return refuse(CodeRefused, "licence %s for %s has expired", l.ID(), l.Product)
	}
	if err := CheckConsumer(c.Consumer); err != nil {
		return refuse(CodeRefused, "%v", err)
	}
	// This host's seats first: the consumer already holds one, or one has room.
	lo, hi := t.productRange(c.Product)
	for _, want := range []bool{true, false} {
		for i := lo; i < hi; i++ {
			// The cheap tests first: a host may hold thousands of seats.
			s := &t.Seats[i]
			if want != slices.Contains(s.Consumers, c.Consumer) || (!want && len(s.Consumers) >= l.Share) {
				continue
			}
			if s.Host == c.Host && s.Session == c.Session {
				if !want {
					s.Consumers = append(s.Consumers, c.Consumer)
					sort.Strings(s.Consumers)
				}
				s.Expires = c.Now + int64(r.TTL)
				cp := s.clone()
				return Result{Seat: &cp}
			}
		}
	}
	freed := t.expire(c.Product, c.Now, r)
	lo, hi = t.productRange(c.Product)
	if hi-lo >= l.Seats {
		return Result{Code: CodeNoSeat, Err: fmt.Sprintf("no free seat of %s: %d of %d held", c.Product, hi-lo, l.Seats), Freed: freed}
	}
	// The product's seats are sorted by number: the first gap is free.
	n, at := 1, lo
	for at < hi && t.Seats[at].N == n {
		n++
		at++
	}
	s := Seat{Product: c.Product, N: n, Host: c.Host, Session: c.Session, Consumers: []string{c.Consumer}, Token: index, Expires: c.Now + int64(r.TTL)}
	t.Seats = slices.Insert(t.Seats, at, s)
	cp := s.clone()
	return Result{Seat: &cp, Freed: freed}
}

// renew extends every listed seat the host still holds. A seat whose lease
// ran out but was not yet freed is still this host's alone, so it is
// renewed too; a freed or re-granted one is lost.
func (t *Table) renew(c Command, r Rules) Result {
	var res Result
	want := make(map[uint64]bool, len(c.Tokens))
	for _, tok := range c.Tokens {
		want[tok] = false
	}
	for i := range t.Seats {
		if s := &t.Seats[i]; s.Host == c.Host && s.Session == c.Session {
			if _, ok := want[s.Token]; ok {
				s.Expires = c.Now + int64(r.TTL)
				want[s.Token] = true
			}
		}
	}
	for _, tok := range c.Tokens {
		if !want[tok] {
			res.Lost = append(res.Lost, tok)
		}
	}
	return res
}

// release drops a consumer (or, with Tokens, whole seats) of the host's
// session; a seat with no consumer left is freed. A restarted daemon
// cannot release what its previous run held: that run's seats come back
// when their leases end, so a grant is never cut short behind a holder's
// back. Releasing what is not held is not an error: a release is safe to
// retry.
func (t *Table) release(c Command) Result {
	var res Result
	kept := t.Seats[:0]
	for _, s := range t.Seats {
		if s.Host == c.Host && s.Session == c.Session && (slices.Contains(c.Tokens, s.Token) ||
			(s.Product == c.Product && slices.Contains(s.Consumers, c.Consumer))) {
			s.Consumers = slices.DeleteFunc(s.Consumers, func(x string) bool { return x == c.Consumer || len(c.Tokens) > 0 })
			if len(s.Consumers) == 0 {
				res.Freed = append(res.Freed, s.clone())
				continue
			}
		}
		kept = append(kept, s)
	}
	t.Seats = kept
	return res
}

// expire frees the seats (of product, or all when "") whose lease ended
// more than Margin before now.
func (t *Table) expire(product string, now int64, r Rules) []Seat {
	due := func(s Seat) bool { return (product == "" || s.Product == product) && s.Expires+int64(r.Margin) <= now }
	if !slices.ContainsFunc(t.Seats, due) {
		return nil
	}
	var freed []Seat
	kept := t.Seats[:0]
	for _, s := range t.Seats {
		if due(s) {
			freed = append(freed, s.clone())
			continue
		}
		kept = append(kept, s)
	}
	t.Seats = kept
	return freed
}

// productRange is where the seats of product are: the table keeps its
// seats sorted by product, then number.
func (t *Table) productRange(product string) (lo, hi int) {
	lo, _ = slices.BinarySearchFunc(t.Seats, product, func(s Seat, p string) int { return strings.Compare(s.Product, p) })
	hi = lo
	for hi < len(t.Seats) && t.Seats[hi].Product == product {
		hi++
	}
	return lo, hi
}

// Expired reports whether any seat is due to be freed at now.
func (t *Table) Expired(now int64, r Rules) bool {
	for _, s := range t.Seats {
		if s.Expires+int64(r.Margin) <= now {
			return true
		}
	}
	return false
}

// clone is a copy that shares nothing with the table: results leave the
// state machine, and what callers do with them must not change it.
func (s Seat) clone() Seat {
	s.Consumers = slices.Clone(s.Consumers)
	return s
}

// Lookup finds the seat granted with token.
func (t *Table) Lookup(token uint64) (Seat, bool) {
	for _, s := range t.Seats {
		if s.Token == token {
			return s.clone(), true
		}
	}
	return Seat{}, false
}

// Current reports whether the grant with token is current at now (keeper
// clock): still held and its lease not over.
func (t *Table) Current(token uint64, now int64) (Seat, error) {
	s, ok := t.Lookup(token)
	if !ok {
		return s, fmt.Errorf("token %d is not current: the seat was released, expired or granted again", token)
	}
	if s.Expires <= now {
		return s, fmt.Errorf("token %d (seat %d of %s on %s): lease ended %s ago and was not renewed",
			token, s.N, s.Product, s.Host, time.Duration(now-s.Expires).Round(time.Millisecond))
	}
	return s, nil
}

// Clone is a deep copy.
func (t *Table) Clone() *Table {
	c := &Table{Index: t.Index, Conf: t.Conf, Licenses: map[string]*License{}}
	for p, l := range t.Licenses {
		c.Licenses[p] = l
	}
	for _, s := range t.Seats {
		c.Seats = append(c.Seats, s.clone())
	}
	return c
}
