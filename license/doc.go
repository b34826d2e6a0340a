// Package license holds licence keys (Ed25519 issuer keys, signed licences),
// the seat table state machine that a Raft group of keeper hosts replicates,
// the holder-side lease rule, and a checker for recorded grant intervals.
//
// It is a leaf: it never imports node or any libp2p package, and does no
// I/O apart from reading and writing key files. Time is always passed in:
// the seat table is a deterministic state machine whose clock is the one the
// Raft leader stamped on each command.
package license
