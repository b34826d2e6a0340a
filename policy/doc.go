// Package policy decides, for one layer and one host, whether and how the
// host keeps its copy of the layer in sync: the layer's policy (set by its
// publisher) comes first, the host's policy second, and where they conflict
// synchronisation is refused with both rules named.
//
// It is pure: no I/O, no clock, no network. It never imports node or any
// libp2p package.
package policy
