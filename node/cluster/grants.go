package cluster

import (
	"fmt"
	"strings"

	"github.com/p2pimg/p2pimg/node/api"
)

// checkGrants validates the grants table.
func (c *Config) checkGrants() error {
	for who, rights := range c.Grants {
		kind, name, ok := strings.Cut(who, ":")
		if !ok || (kind != "user" && kind != "group") || name == "" {
			return fmt.Errorf("field grants: key %q: want \"user:NAME\" or \"group:NAME\"", who)
		}
		for _, r := range rights {
			if _, err := api.ParseRight(r); err != nil {
				return fmt.Errorf("field grants.%q: %v", who, err)
			}
		}
	}
	return nil
}

// Granted reports whether the grants table gives right to the local user
// named user or to one of the groups it is in.
func (c *Config) Granted(right api.Right, user string, groups []string) bool {
	has := func(who string) bool {
		for _, r := range c.Grants[who] {
			if api.Right(r) == right {
				return true
			}
		}
		return false
	}
	if user != "" && has("user:"+user) {
		return true
	}
	for _, g := range groups {
		if has("group:" + g) {
			return true
		}
	}
	return false
}
