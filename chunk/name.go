package chunk

import (
	"fmt"
	"regexp"
	"strings"
)

// DefaultTag is the tag of a layer named without one.
const DefaultTag = "latest"

// Name is a layer's mutable name: NAME:TAG. It maps to a manifest CID.
type Name struct {
	Repo string
	Tag  string
}

var (
	// An optional registry host[:port]/ first, as in OCI references.
	repoRE = regexp.MustCompile(`^(?:[a-z0-9]+(?:[.-][a-z0-9]+)*:[0-9]{1,5}/)?[a-z0-9]+(?:[._/-][a-z0-9]+)*$`)
	tagRE  = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// ParseName reads NAME[:TAG]. Names are lower-case letters and digits
// separated by single '.', '_', '-' or '/', at most 128 bytes, optionally
// after a registry host:port (127.0.0.1:5000/demo/app, as in OCI
// references); tags are letters, digits, '_', '.', '-', at most 128
// bytes, not starting with '.' or '-'. The tag is what follows the last
// ':' after the last '/'.
func ParseName(s string) (Name, error) {
	repo, tag := s, DefaultTag
	if i := strings.LastIndex(s, ":"); i > strings.LastIndex(s, "/") {
		repo, tag = s[:i], s[i+1:]
	}
	if len(repo) > 128 || !repoRE.MatchString(repo) {
		return Name{}, fmt.Errorf("layer name %q: use lower-case letters and digits separated by '.', '_', '-' or '/' (at most 128), e.g. ubuntu-base:24.04", s)
	}
	if !tagRE.MatchString(tag) {
		return Name{}, fmt.Errorf("layer tag in %q: use letters, digits, '_', '.', '-' (at most 128, not starting with '.' or '-')", s)
	}
	return Name{Repo: repo, Tag: tag}, nil
}

func (n Name) String() string { return n.Repo + ":" + n.Tag }
