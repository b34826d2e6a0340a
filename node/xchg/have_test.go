package xchg

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"slices"
	"testing"
)

func TestNotesRoundTrip(t *testing.T) {
	t.Parallel()
	many := make([]Note, MaxNotes+3) // split over two frames
	for i := range many {
		many[i] = Note{Index: i, Kind: NoteKind(i % 3)}
	}
	many = append(many, Note{Index: 1, Kind: NoteState}, Note{Index: 0, Kind: NoteState})
	{
	}
	for _, tc := range []struct {
		name  string
		notes []Note
	}{
		{"one", []Note{{Index: 0, Kind: NoteHave}}},
		{"kinds", []Note{{Index: 7, Kind: NoteAsked}, {Index: 7, Kind: NoteDropped}, {Index: 9999, Kind: NoteHave}}},
		{"split", many},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			bw := bufio.NewWriter(&buf)
			if err := writeNotes(bw, tc.notes); err != nil {
				t.Fatal(err)
			}
			got := readNotes(t, &HaveWatch{br: bufio.NewReader(&buf), n: 10000})
			if !slices.Equal(got, tc.notes) {
				t.Fatalf("read %d notes, want the %d written", len(got), len(tc.notes))
			}
		})
	}
}

// readNotes reads every note until the watch ends.
func readNotes(t *testing.T, hw *HaveWatch) []Note {
	t.Helper()
	var got []Note
	for {
		ns, err := hw.Next()
		if errors.Is(err, io.EOF) {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ns...)
	}
}

func TestNotesRejected(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"empty frame", []byte{0}},
		{"index past the layer", []byte{1, 12 << 2}},
		{"state past 1", []byte{1, 2<<2 | 3}},
		{"truncated", []byte{2, 4}},
		{"too many", []byte{0x81, 0x40}}, // 8193 notes
	} {
		t.Run(tc.name, func(t *testing.T) {
			hw := &HaveWatch{br: bufio.NewReader(bytes.NewReader(tc.data)), n: 10}
			if _, err := hw.Next(); !errors.Is(err, ErrProtocol) {
				t.Fatalf("got %v, want a protocol violation", err)
			}
		})
	}
}

func FuzzReadNotes(f *testing.F) {
	var buf bytes.Buffer
	bw := bufio.NewWriter(&buf)
	writeNotes(bw, []Note{{Index: 3, Kind: NoteAsked}, {Index: 5, Kind: NoteHave}})
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		hw := &HaveWatch{br: bufio.NewReader(bytes.NewReader(data)), n: 64}
		for {
			ns, err := hw.Next()
			if err != nil {
				return
			}
			if len(ns) == 0 || len(ns) > MaxNotes {
				t.Fatalf("accepted a frame of %d notes", len(ns))
			}
			for _, nt := range ns {
				if nt.Index < 0 || nt.Index >= 64 || nt.Kind == NoteState && nt.Index > 1 {
					t.Fatalf("accepted note %+v for 64 chunks", nt)
				}
			}
		}
	})
}
