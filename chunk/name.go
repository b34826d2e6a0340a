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
	repoRE = regexp.MustCompile(`^[a-z0-9]+(?:[._/-][a-z0-9]+)*$`)
	tagRE  = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// ParseName reads NAME[:TAG]. Names are lower-case letters and digits
// separated by single '.', '_', '-' or '/', at most 128 bytes; tags are
// letters, digits, '_', '.', '-', at most 128 bytes, not starting with '.' or '-'.
func ParseName(s string) (Name, error) {
	repo, tag, found := strings.Cut(s, ":")
	if !found {
		tag = DefaultTag
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
