// Package strictcbor is the one strict CBOR setup of p2pimg's signed and
// wire formats (manifests, licences, seat messages): deterministic
// encoding, and decoding that refuses duplicate and unknown keys,
// indefinite lengths, tags, and anything past the caller's size limits
// (Tolerant: the same, except that it skips unknown keys). It is a leaf: it imports nothing of p2pimg.
package strictcbor

import "github.com/fxamacker/cbor/v2"

// Encoder is the deterministic (core deterministic) encoding mode.
func Encoder() cbor.EncMode {
	m, err := cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		panic(err) // fixed options: cannot fail
	}
	return m
}

// Decoder is the strict decoding mode, accepting at most maxArray
// elements in an array and maxMap pairs in a map, nested at most 8 deep.
func Decoder(maxArray, maxMap int) cbor.DecMode {
	return decoder(maxArray, maxMap, cbor.ExtraDecErrorUnknownField)
}

// Tolerant is Decoder except that map keys the destination struct lacks
// are skipped; they still count against maxMap, must be well-formed and
// appear once. It is for messages a newer version may extend whose
// signature, if any, covers their bytes whole: a key this version skips
// must not travel under a signature that does not cover it.
func Tolerant(maxArray, maxMap int) cbor.DecMode {
	return decoder(maxArray, maxMap, cbor.ExtraDecErrorNone)
}

func decoder(maxArray, maxMap int, extra cbor.ExtraDecErrorCond) cbor.DecMode {
	m, err := cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		ExtraReturnErrors: extra,
		IndefLength:       cbor.IndefLengthForbidden,
		TagsMd:            cbor.TagsForbidden,
		MaxArrayElements:  maxArray,
		MaxMapPairs:       maxMap,
		MaxNestedLevels:   8,
	}.DecMode()
	if err != nil {
		panic(err) // limits are the caller's constants
	}
	return m
}
