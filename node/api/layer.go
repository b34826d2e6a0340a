package api

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/p2pimg/p2pimg/chunk"
)

// Layer is a layer record as the API shows it: chunk.Layer with its
// published time in RFC 3339 (the store keeps unix nanoseconds, which
// the signed mapping covers).
type Layer struct {
	chunk.Layer
	Published time.Time `json:"published,omitzero"`
}

// WireLayer is l as the API shows it.
func WireLayer(l chunk.Layer) Layer {
	w := Layer{Layer: l}
	if l.Published != 0 {
		w.Published = time.Unix(0, l.Published).UTC()
	}
	return w
}

// Record is the layer record the API showed.
func (w Layer) Record() chunk.Layer {
	l := w.Layer
	l.Published = 0
	if !w.Published.IsZero() {
		l.Published = w.Published.UnixNano()
	}
	return l
}

func wireLayers(ls []chunk.Layer) []Layer {
	out := make([]Layer, len(ls))
	for i, l := range ls {
		out[i] = WireLayer(l)
	}
	return out
}

func records(ws []Layer) []chunk.Layer {
	if ws == nil {
		return nil
	}
	out := make([]chunk.Layer, len(ws))
	for i, w := range ws {
		out[i] = w.Record()
	}
	return out
}

// The results that carry layer records keep them as chunk.Layer (what
// the services make) and show them as Layer: their JSON methods swap
// those fields for their wire form.

// swap marshals v with the named fields replaced.
func swap(v any, fields map[string]any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	for k, x := range fields {
		if m[k], err = json.Marshal(x); err != nil {
			return nil, err
		}
	}
	return json.Marshal(m)
}

// unswap reads b into v, but the named fields into their own targets.
func unswap(b []byte, v any, fields map[string]any) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	for k, x := range fields {
		if raw, ok := m[k]; ok {
			if err := json.Unmarshal(raw, x); err != nil {
				return fmt.Errorf("%s: %w", k, err)
			}
			delete(m, k)
		}
	}
	rest, _ := json.Marshal(m)
	return json.Unmarshal(rest, v)
}

// MarshalJSON shows the layer's published time in RFC 3339.
func (r FetchResult) MarshalJSON() ([]byte, error) {
	type plain FetchResult
	return swap(plain(r), map[string]any{"layer": WireLayer(r.Layer)})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (r *FetchResult) UnmarshalJSON(b []byte) error {
	type plain FetchResult
	var l Layer
	err := unswap(b, (*plain)(r), map[string]any{"layer": &l})
	r.Layer = l.Record()
	return err
}

// MarshalJSON shows the layer's published time in RFC 3339.
func (r AddResult) MarshalJSON() ([]byte, error) {
	type plain AddResult
	return swap(plain(r), map[string]any{"layer": WireLayer(r.Layer)})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (r *AddResult) UnmarshalJSON(b []byte) error {
	type plain AddResult
	var l Layer
	err := unswap(b, (*plain)(r), map[string]any{"layer": &l})
	r.Layer = l.Record()
	return err
}

// MarshalJSON shows the layer's published time in RFC 3339.
func (r CheckoutResult) MarshalJSON() ([]byte, error) {
	type plain CheckoutResult
	return swap(plain(r), map[string]any{"layer": WireLayer(r.Layer)})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (r *CheckoutResult) UnmarshalJSON(b []byte) error {
	type plain CheckoutResult
	var l Layer
	err := unswap(b, (*plain)(r), map[string]any{"layer": &l})
	r.Layer = l.Record()
	return err
}

// MarshalJSON shows the layers' published times in RFC 3339.
func (r SplitResult) MarshalJSON() ([]byte, error) {
	type plain SplitResult
	return swap(plain(r), map[string]any{"common": WireLayer(r.Common), "layers": wireLayers(r.Layers)})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (r *SplitResult) UnmarshalJSON(b []byte) error {
	type plain SplitResult
	var c Layer
	var ls []Layer
	err := unswap(b, (*plain)(r), map[string]any{"common": &c, "layers": &ls})
	r.Common, r.Layers = c.Record(), records(ls)
	return err
}

// MarshalJSON shows the layers' published times in RFC 3339.
func (r ImportResult) MarshalJSON() ([]byte, error) {
	type plain ImportResult
	return swap(plain(r), map[string]any{"layers": wireLayers(r.Layers)})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (r *ImportResult) UnmarshalJSON(b []byte) error {
	type plain ImportResult
	var ls []Layer
	err := unswap(b, (*plain)(r), map[string]any{"layers": &ls})
	r.Layers = records(ls)
	return err
}
