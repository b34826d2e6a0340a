// Package cluster reads the files that make a host part of a cluster: the
// cluster file (members, publishers, operators, keepers, issuers, lease
// rules), the private-network key and members files, the host's identity
// key and operator keys. It only reads, checks and writes files; it never
// opens a network connection.
package cluster

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"

	"github.com/p2pimg/p2pimg/license"
)

// Config is the cluster file: the same on every host.
type Config struct {
	// Name separates clusters on one LAN (mDNS service and gossip topics).
	Name string `toml:"name"`
	// PSK, 64 hex digits, makes a libp2p private network: only hosts with
	// the key can connect at all. It works over TCP only (QUIC is off then).
	PSK string `toml:"psk,omitempty"`
	// Members lists the peer ids allowed in the cluster; empty = open cluster.
	Members []string `toml:"members,omitempty"`
	// Publishers lists the peer ids whose layer announcements are accepted;
	// empty = any member may publish.
	Publishers []string `toml:"publishers,omitempty"`
	// Operators lists the keys (in peer id form, from `p2pimg cluster
	// operator-key`) whose activations every host obeys.
	Operators []string `toml:"operators,omitempty"`
	// Keepers lists the peer ids of the hosts that keep the seat table in a
	// Raft group: 1, 3 or 5 (3 or 5 in production). Empty = no licence
	// seats in this cluster.
	Keepers []string `toml:"keepers,omitempty"`
	// Issuers lists the licence issuer public keys (64 hex digits, from
	// `p2pimg license issuer-key`) whose licences are accepted.
	Issuers []string `toml:"issuers,omitempty"`
	// SeatTTL is a seat lease's length (default 30s); holders renew every
	// third of it. SeatMargin is how long after a lease ends the keepers
	// wait before freeing the seat (default 5s): it must exceed the clock
	// difference between keepers.
	SeatTTL    string `toml:"seat_ttl,omitempty"`
	SeatMargin string `toml:"seat_margin,omitempty"`
	// Grants gives local users and groups rights on the local API of every
	// host, as an operator key would: "user:NAME" or "group:NAME" to a
	// list of rights (activate, map, policy, license, gc, cluster).
	Grants map[string][]string `toml:"grants,omitempty"`

	psk     pnet.PSK
	keepers []peer.ID
	rules   license.Rules
	// acl is what a reload may change (members, publishers, operators,
	// grants), swapped whole so services that share this Config read
	// either the old lists or the new ones, never a mix.
	acl atomic.Pointer[acl]
}

var clusterNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// Load reads and checks a cluster file.
func Load(path string) (*Config, error) {
	var c Config
	md, err := toml.DecodeFile(path, &c)
	if err != nil {
		return nil, fmt.Errorf("cluster file %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return nil, fmt.Errorf("cluster file %s: unknown field %q", path, und[0].String())
	}
	if err := c.check(); err != nil {
		return nil, fmt.Errorf("cluster file %s: %w", path, err)
	}
	return &c, nil
}

// ReadPSKFile reads a private-network key for --psk: a libp2p swarm key
// file (/key/swarm/psk/1.0.0/, /base16/, then the key) or the 64 hex
// digits alone. It returns the key as 64 hex digits, as the cluster file
// holds it.
func ReadPSKFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("psk file: %w", err)
	}
	text := strings.TrimSpace(string(b))
	if strings.HasPrefix(text, "/key/swarm/psk/1.0.0/") {
		k, err := pnet.DecodeV1PSK(strings.NewReader(text))
		if err != nil {
			return "", fmt.Errorf("psk file %s: %w", path, err)
		}
		if len(k) != 32 {
			return "", fmt.Errorf("psk file %s: a %d-byte key, want 32", path, len(k))
		}
		return hex.EncodeToString(k), nil
	}
	if k, err := hex.DecodeString(text); err != nil || len(k) != 32 {
		return "", fmt.Errorf("psk file %s: want a libp2p swarm key file or 64 hex digits (32 bytes)", path)
	}
	return text, nil
}

// ReadMembersFile reads a members list for --members: one peer id per line
// (as `p2pimg identity` prints them); blank lines and # comments are
// ignored. A file with no peer id is refused: an open cluster is the
// absence of a list, never an empty one.
func ReadMembersFile(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("members file: %w", err)
	}
	var ids []string
	for i, line := range strings.Split(string(b), "\n") {
		line, _, _ = strings.Cut(line, "#")
		if line = strings.TrimSpace(line); line == "" {
			continue
		}
		if _, err := peer.Decode(line); err != nil {
			return nil, fmt.Errorf("members file %s, line %d: %q is not a peer id", path, i+1, line)
		}
		ids = append(ids, line)
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("members file %s: no peer id in it", path)
	}
	return ids, nil
}

// Default is an open cluster named "default" with no PSK.
func Default() *Config {
	c := &Config{Name: "default"}
	c.check()
	return c
}

// New makes a cluster config with a fresh PSK.
func New(name string, members, operators []string) (*Config, error) {
	key := make([]byte, 32)
	rand.Read(key)
	c := &Config{Name: name, PSK: hex.EncodeToString(key), Members: members, Operators: operators}
	return c, c.check()
}

// check validates the fields and fills the parsed forms.
func (c *Config) check() error {
	if !clusterNameRE.MatchString(c.Name) {
		return fmt.Errorf("field name: %q must be 1-63 lower-case letters, digits or '-'", c.Name)
	}
	c.psk = nil
	if c.PSK != "" {
		k, err := hex.DecodeString(strings.TrimSpace(c.PSK))
		if err != nil || len(k) != 32 {
			return fmt.Errorf("field psk: want 64 hex digits (32 bytes)")
		}
		c.psk = k
	}
	a, err := c.parseACL()
	if err != nil {
		return err
	}
	c.acl.Store(a)
	return c.checkSeats()
}

func (c *Config) checkSeats() error {
	ks, err := peerSet("keepers", c.Keepers)
	if err != nil {
		return err
	}
	switch len(ks) {
	case 0, 1, 3, 5:
	default:
		return fmt.Errorf("field keepers: %d distinct keepers; want 1, 3 or 5 (a Raft group needs an odd number, 3 or 5 in production)", len(ks))
	}
	c.keepers = nil
	for _, s := range c.Keepers {
		id, _ := peer.Decode(s)
		if !c.IsMember(id) {
			return fmt.Errorf("field keepers: %s is not in members", s)
		}
		if !slices.Contains(c.keepers, id) {
			c.keepers = append(c.keepers, id)
		}
	}
	c.rules = license.Rules{TTL: 30 * time.Second, Margin: 5 * time.Second}
	if c.SeatTTL != "" {
		if c.rules.TTL, err = time.ParseDuration(c.SeatTTL); err != nil {
			return fmt.Errorf("field seat_ttl: %v", err)
		}
	}
	if c.SeatMargin != "" {
		if c.rules.Margin, err = time.ParseDuration(c.SeatMargin); err != nil {
			return fmt.Errorf("field seat_margin: %v", err)
		}
	}
	if err := c.rules.Check(); err != nil {
		return fmt.Errorf("seat lease rules: %v", err)
	}
	for i, s := range c.Issuers {
		k, err := license.ParsePublic(s)
		if err != nil {
			return fmt.Errorf("field issuers[%d]: %v", i, err)
		}
		c.rules.Trusted = append(c.rules.Trusted, k)
	}
	return nil
}

// IsKeeper reports whether p keeps the seat table.
func (c *Config) IsKeeper(p peer.ID) bool { return slices.Contains(c.keepers, p) }

// SeatRules are the lease rules of the cluster.
func (c *Config) SeatRules() license.Rules { return c.rules }

// IsOperator reports whether k's activations are obeyed.
func (c *Config) IsOperator(k peer.ID) bool { return c.live().operators[k] }

func peerSet(field string, ids []string) (map[peer.ID]bool, error) {
	set := map[peer.ID]bool{}
	for i, s := range ids {
		id, err := peer.Decode(s)
		if err != nil {
			return nil, fmt.Errorf("field %s[%d]: %q is not a peer id: %v", field, i, s, err)
		}
		set[id] = true
	}
	return set, nil
}

// Open reports whether any host may join (no members list).
func (c *Config) Open() bool { return len(c.live().members) == 0 }

// IsMember reports whether p may connect.
func (c *Config) IsMember(p peer.ID) bool { return c.live().isMember(p) }

// MayPublish reports whether p's layer announcements are accepted.
func (c *Config) MayPublish(p peer.ID) bool {
	a := c.live()
	if len(a.publishers) > 0 {
		return a.publishers[p]
	}
	return a.isMember(p)
}

// Write saves the cluster file (mode 0600: it holds the PSK).
func (c *Config) Write(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "# p2pimg cluster file: the same on every host. Keep it secret (it holds the PSK).\n")
	if err := toml.NewEncoder(f).Encode(c); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Check validates the fields (after a program changed them).
func (c *Config) Check() error { return c.check() }

// NetworkKey is the private-network key (nil: none).
func (c *Config) NetworkKey() pnet.PSK { return c.psk }

// KeeperIDs are the keepers of the seat table, in the file's order.
func (c *Config) KeeperIDs() []peer.ID { return c.keepers }
