// Package testnet runs p2pimg daemons on this machine: for the project's
// tests and benchmarks, and for people trying p2pimg before rolling it out.
package testnet
