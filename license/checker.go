package license

import (
	"fmt"
	"sort"
	"time"
)

// Interval is a span during which a holder treated a grant as valid, as the
// holder itself recorded it.
type Interval struct {
	Product string    `json:"product"`
	Holder  string    `json:"holder"`
	Token   uint64    `json:"token"`
	From    time.Time `json:"from"`
	To      time.Time `json:"to"`
}

// CheckIntervals is the safety checker of the seat fault tests: it reports
// the first instant at which more distinct grants of a product were held
// as valid than the product has seats. Intervals are half open [From, To).
func CheckIntervals(ivs []Interval, seats map[string]int) error {
	type event struct {
		at    time.Time
		delta int
		iv    Interval
	}
	byProduct := map[string][]event{}
	for _, iv := range ivs {
		if !iv.To.After(iv.From) {
			continue
		}
		byProduct[iv.Product] = append(byProduct[iv.Product], event{iv.From, +1, iv}, event{iv.To, -1, iv})
	}
	for p, evs := range byProduct {
		sort.SliceStable(evs, func(i, j int) bool {
			if !evs[i].at.Equal(evs[j].at) {
				return evs[i].at.Before(evs[j].at)
			}
			return evs[i].delta < evs[j].delta // ends before starts at one instant
		})
		// Count distinct grants: overlapping intervals of one grant (renewals
		// recorded separately) count once.
		held := map[uint64]int{}
		for _, e := range evs {
			held[e.iv.Token] += e.delta
			if held[e.iv.Token] == 0 {
				delete(held, e.iv.Token)
			}
			if len(held) > seats[p] {
				var who []string
				for _, o := range ivs {
					if o.Product == p && held[o.Token] > 0 && !o.From.After(e.at) && o.To.After(e.at) {
						who = append(who, fmt.Sprintf("%s token %d [%s, %s)", o.Holder, o.Token,
							o.From.Format("15:04:05.000"), o.To.Format("15:04:05.000")))
					}
				}
				return fmt.Errorf("over-allocation of %s at %s: %d grants valid, %d seats: %v",
					p, e.at.Format("15:04:05.000000"), len(held), seats[p], who)
			}
		}
	}
	return nil
}
