package gossip

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// How a record's data is decoded depends on who signed which bytes.
//
// What a host says of itself (holding, state, host) is signed in the
// envelope over the data's bytes whole, and travels as those bytes: a
// field a newer version added is covered by that signature and reaches
// every host unaltered, even through hosts that skip it. So it is
// skipped (decodeStated): during a rolling upgrade older hosts keep
// reading what newer ones say of themselves.
//
// A mapping or an activation carries its publisher's or signer's own
// signature over the fields this version knows (signedBytes), not over
// the bytes: a field this version does not know would travel unsigned
// under that signature, for any relay to add or edit. So it is refused
// (decodeSigned); a newer version adds such fields signed only when set
// (like Activation.Lazy), so that older hosts refuse just the records
// that use them.
//
// Either way the data must be one well-formed JSON value whose objects
// name each key once (encoding/json would keep the last of two, another
// decoder the first), and each field must have its type.

// decodeSigned decodes the data of a mapping or an activation: keys
// unique, no unknown field, nothing after it.
func decodeSigned(b []byte, v any) error {
	if err := uniqueKeys(b); err != nil {
		return err
	}
	return decodeStrict(b, v)
}

// decodeStated decodes the data of what a host says of itself: keys
// unique, fields unknown to this version skipped, nothing after it.
func decodeStated(b []byte, v any) error {
	if err := uniqueKeys(b); err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// uniqueKeys checks that b is one JSON value in which no object names a
// key twice. The caller bounds len(b) (maxRecordData).
func uniqueKeys(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber() // numbers are only skipped here: no float conversion
	type level struct {
		keys    map[string]bool // nil: an array
		wantKey bool
	}
	var stack []*level
	values := 0
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			switch {
			case len(stack) > 0:
				return io.ErrUnexpectedEOF
			case values == 0:
				return errors.New("no JSON value")
			}
			return nil
		}
		if err != nil {
			return err
		}
		var top *level
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.keys != nil && top.wantKey {
			if k, ok := tok.(string); ok {
				if top.keys[k] {
					return fmt.Errorf("key %.40q appears twice in one object", k)
				}
				top.keys[k] = true
				top.wantKey = false
				continue
			}
		}
		if top == nil {
			if values++; values > 1 {
				return errors.New("trailing data")
			}
		} else if top.keys != nil {
			top.wantKey = true // after this value: the next key or the end
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &level{keys: map[string]bool{}, wantKey: true})
		case json.Delim('['):
			stack = append(stack, &level{})
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
	}
}
