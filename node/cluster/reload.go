package cluster

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"
)

// ErrNeedsRestart is returned by Apply when the new files change what a
// running host cannot take without a restart.
var ErrNeedsRestart = errors.New("needs a daemon restart")

// acl is the part of a cluster a running host can swap: who may connect,
// publish and operate, and the local API grants.
type acl struct {
	members, publishers, operators map[peer.ID]bool
	grants                         map[string][]string
}

func (a *acl) isMember(p peer.ID) bool { return len(a.members) == 0 || a.members[p] }

func (c *Config) parseACL() (*acl, error) {
	var a acl
	var err error
	if a.members, err = peerSet("members", c.Members); err != nil {
		return nil, err
	}
	if a.publishers, err = peerSet("publishers", c.Publishers); err != nil {
		return nil, err
	}
	if a.operators, err = peerSet("operators", c.Operators); err != nil {
		return nil, err
	}
	if err := checkGrants(c.Grants); err != nil {
		return nil, err
	}
	a.grants = maps.Clone(c.Grants)
	return &a, nil
}

// Apply makes next's members, publishers, operators and grants this
// config's, at once for every service that reads c. It refuses, changing
// nothing, when next differs in a field a running host cannot change:
// name (gossip topics, mDNS), psk (a libp2p private network is fixed when
// the host is built), keepers, issuers, seat_ttl or seat_margin (the Raft
// group and its leases). next must have been checked (Load or Check).
//
// The exported list fields of c keep the values read at start: the lists
// in force are those the methods (IsMember, MayPublish, ...) answer from.
func (c *Config) Apply(next *Config) error {
	var fixed []string
	if c.Name != next.Name {
		fixed = append(fixed, "name")
	}
	if !slices.Equal(c.psk, next.psk) {
		fixed = append(fixed, "psk")
	}
	if !slices.Equal(c.keepers, next.keepers) {
		fixed = append(fixed, "keepers")
	}
	if !slices.Equal(c.Issuers, next.Issuers) {
		fixed = append(fixed, "issuers")
	}
	if c.rules.TTL != next.rules.TTL {
		fixed = append(fixed, "seat_ttl")
	}
	if c.rules.Margin != next.rules.Margin {
		fixed = append(fixed, "seat_margin")
	}
	if len(fixed) > 0 {
		return fmt.Errorf("changed %s: %w (nothing was applied; a running host keeps its private network, gossip topics and seat group)", strings.Join(fixed, ", "), ErrNeedsRestart)
	}
	a := next.acl.Load()
	if a == nil {
		return errors.New("cluster config not checked")
	}
	c.acl.Store(a)
	return nil
}

// MemberIDs are the peer ids allowed in now (none: an open cluster).
func (c *Config) MemberIDs() []peer.ID {
	return slices.Collect(maps.Keys(c.live().members))
}

// live is the acl in force; a Config never checked is an open cluster.
func (c *Config) live() *acl {
	if a := c.acl.Load(); a != nil {
		return a
	}
	return &acl{}
}
