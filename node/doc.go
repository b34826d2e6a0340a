// Package node is the p2pimg daemon: it owns the chunk store and serves the
// local API that the CLI and tests use. It wires the domain packages (chunk,
// license, policy) together; they never import it.
package node
