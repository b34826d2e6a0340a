package api

import (
	"fmt"
	"slices"
	"strings"
)

// CodeForbidden: the caller lacks a right the request needs.
const CodeForbidden = "forbidden"

// Forbidden marks err as a request the caller may not make.
func Forbidden(err error) error { return Coded(CodeForbidden, err) }

// Right is something only some local API callers may do. Root and the
// daemon's own user have every right; anyone else in the socket's group
// has a right only by presenting an operator key (the request signed with
// it) or by a grant in the cluster file.
type Right string

// The rights.
const (
	RightActivate Right = "activate" // activate and deactivate layers
	RightMap      Right = "map"      // activations with --map
	RightPolicy   Right = "policy"   // host and layer policies (also add --policy)
	RightLicense  Right = "license"  // install licences
	RightGC       Right = "gc"       // collect garbage
	RightCluster  Right = "cluster"  // partition, cluster forget
)

// Rights lists every right, in the order help texts show them.
var Rights = []Right{RightActivate, RightMap, RightPolicy, RightLicense, RightGC, RightCluster}

// ParseRight reads a right's name.
func ParseRight(s string) (Right, error) {
	r := Right(s)
	if !slices.Contains(Rights, r) {
		names := make([]string, len(Rights))
		for i, r := range Rights {
			names[i] = string(r)
		}
		return "", fmt.Errorf("unknown right %q (want one of %s)", s, strings.Join(names, ", "))
	}
	return r, nil
}

// OperatorHeader carries an operator key's signature of one request (see
// cluster.SignRequest): presenting the key proves every right.
const OperatorHeader = "P2pimg-Operator"
