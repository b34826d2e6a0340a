package cluster

import (
	"fmt"
	"strings"

	"github.com/p2pimg/p2pimg/node/api"
)

// checkGrants validates a grants table.
func checkGrants(grants map[string][]string) error {
	for who, rights := range grants {
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
	grants := c.live().grants
	has := func(who string) bool {
		for _, r := range grants[who] {
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
