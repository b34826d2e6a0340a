//go:build !amd64 || !gc || noasm

package sha256x16

// Accelerated reports whether Sum256Many runs sixteen lanes at once.
func Accelerated() bool { return false }

// Sum256Many sets out[i] to the SHA-256 of msgs[i]; out must be at least as
// long as msgs.
func Sum256Many(msgs [][]byte, out [][32]byte) { sumEach(msgs, out[:len(msgs)]) }
