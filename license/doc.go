// Package license will hold licence keys, the seat table state machine and
// lease rules (seats are decided by a Raft group of keeper hosts). It is a
// leaf: it never imports node or any libp2p package.
package license
