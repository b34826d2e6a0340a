// Package chunk turns files and directory trees into content-addressed chunks
// and manifests (layers), and defines the chunk store every daemon keeps.
//
// It is a leaf of the system: it never imports node, libp2p or badger.
// Content ids are CIDv1 with the raw codec; the multihash is sha2-256 by
// default and blake3 where a layer asks for it. Chunks are cut either by a
// content-defined chunker (FastCDC: gear hash with normalised chunking) or in
// fixed-size aligned blocks, and the parameters are recorded in the manifest,
// so any host can re-derive exactly the same chunks from the same bytes.
package chunk
