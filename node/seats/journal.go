package seats

import (
	"bufio"
	"encoding/json"
	"io"
	"time"

	"github.com/p2pimg/p2pimg/license"
)

// journalLine records one interval (or the end of a grant) for the fault
// tests' checker.
type journalLine struct {
	license.Interval
	End time.Time `json:"end,omitzero"` // the holder stopped treating it as valid
}

// ReadJournal turns a seat journal (Config.SeatJournal) into the
// intervals during which the host treated each grant as valid: each
// recorded lease, cut short where the host stopped using the grant. A
// torn last line (the host was killed while writing) is skipped.
func ReadJournal(r io.Reader) ([]license.Interval, error) {
	var lines []journalLine
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		var l journalLine
		if json.Unmarshal(sc.Bytes(), &l) == nil {
			lines = append(lines, l)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	var out []license.Interval
	for i, l := range lines {
		if l.End.IsZero() {
			iv := l.Interval
			// The first end of this grant recorded after the interval began cuts it.
			for _, e := range lines[i+1:] {
				if !e.End.IsZero() && e.Token == l.Token && e.Holder == l.Holder {
					if e.End.Before(iv.To) {
						iv.To = e.End
					}
					break
				}
			}
			out = append(out, iv)
		}
	}
	return out, nil
}

func (sv *Service) record(l journalLine) {
	if sv.journalFile == nil {
		return
	}
	l.Holder = sv.cfg.Host.ID().String()
	b, _ := json.Marshal(l)
	sv.journalFile.Write(append(b, '\n'))
}
