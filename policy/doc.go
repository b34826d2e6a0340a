// Package policy will hold layer and host synchronisation policies and their
// resolution into one effective policy (layer first; conflicts refused). It
// is pure: no I/O, and it never imports node or any libp2p package.
package policy
