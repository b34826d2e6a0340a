package fetch

import (
	"slices"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/xchg"
)

// seedFetch is a fetch of n chunks by host "b" with a complete seed "s"
// and other fetchers whose have-bitmaps are given, all watched (notes).
func seedFetch(t *testing.T, n int, others map[peer.ID][]bool) *fetch {
	t.Helper()
	refs := make([]chunk.Ref, n)
	for i := range refs {
		refs[i].Size = 64 << 10
	}
	now := time.Now()
	f := newFetch("b", chunkCID(t), refs, make([]bool, n), now.Add(-time.Minute))
	f.last = now
	all := make([]bool, n)
	for i := range all {
		all[i] = true
	}
	f.watching["s"] = true
	f.view("s", all)
	for p, has := range others {
		f.watching[p] = true
		f.view(p, has)
		f.noted(p, []xchg.Note{{Index: 1, Kind: xchg.NoteState}})
	}
	return f
}

func chunkCID(t *testing.T) cid.Cid {
	t.Helper()
	c, err := chunk.SumCID([]byte("layer"), chunk.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestSeedPicks(t *testing.T) {
	t.Parallel()
	const n = 12
	none := make([]bool, n)
	heldByA := make([]bool, n)
	for i := range heldByA {
		heldByA[i] = true // "a" has every chunk but is still fetching (it has not said otherwise)
	}
	heldByA[0] = false
	allButFive, onlyFive := make([]bool, n), make([]bool, n)
	for i := range allButFive {
		allButFive[i] = i != 5
	}
	onlyFive[5] = true
	share1 := make([]bool, n)
	for i := 1; i < n; i += 3 {
		share1[i] = true
	}
	for _, tc := range []struct {
		name    string
		others  map[peer.ID][]bool
		asked   map[peer.ID][]int // notes: asked of a seed
		endgame bool
		want    []int
	}{
		// b sorts after a and before c: rank 1 of 3, its share is i%3 == 1.
		{"own share only", map[peer.ID][]bool{"a": none, "c": none}, nil, false, []int{1, 4, 7, 10}},
		{"own share, idle: still only its own", map[peer.ID][]bool{"a": none, "c": none}, nil, true, []int{1, 4, 7, 10}},
		{"own share asked by another, not here yet: nothing", map[peer.ID][]bool{"a": none, "c": none},
			map[peer.ID][]int{"a": {1, 4, 7, 10}}, true, nil},
		{"own share out: others' first copies when idle", map[peer.ID][]bool{"a": none, "c": share1},
			map[peer.ID][]int{"a": {0, 3}}, true, []int{2, 5, 6, 8, 9, 11}},
		{"own share out: not while busy", map[peer.ID][]bool{"a": none, "c": share1},
			map[peer.ID][]int{"a": {0, 3}}, false, nil},
		{"nothing asked twice", map[peer.ID][]bool{"a": none, "c": none},
			map[peer.ID][]int{"a": {1, 4, 7, 10, 0, 3}}, false, nil},
		{"no second copy while a first copy is on its way", map[peer.ID][]bool{"a": heldByA},
			map[peer.ID][]int{"a": {0}}, true, nil},
		{"every chunk left the seed once: second copies of the previous share", map[peer.ID][]bool{"a": allButFive, "c": onlyFive},
			nil, false, []int{0, 3, 6, 9}},
		{"a second copy another host asked for is not asked again", map[peer.ID][]bool{"a": allButFive, "c": onlyFive},
			map[peer.ID][]int{"c": {3}}, false, []int{0, 6, 9}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := seedFetch(t, n, tc.others)
			for p, idx := range tc.asked {
				var ns []xchg.Note
				for _, i := range idx {
					ns = append(ns, xchg.Note{Index: i, Kind: xchg.NoteAsked})
				}
				f.noted(p, ns)
			}
			cursor := 0
			got := f.pick("s", &cursor, n, tc.endgame, time.Now())
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("picked %v from the seed, want %v", got, tc.want)
			}
		})
	}
}

func TestDuplicatesOnlyInTheEndgameOrWhenLate(t *testing.T) {
	t.Parallel()
	const n = 4
	both := []bool{true, true, false, false} // chunks 2 and 3: nobody has them yet
	for _, tc := range []struct {
		name   string
		ask    []int         // chunks asked of "a" first
		ago    time.Duration // how long ago
		missed []int         // chunks "b" has already
		want   []int         // what an idle worker at "c" gets
	}{
		{"others still to come: no duplicate", []int{0, 1}, 0, nil, nil},
		{"others still to come, a request late: that one", []int{0, 1}, lateAfter + time.Second, nil, []int{0, 1}},
		{"every missing chunk on its way: duplicates", []int{0, 1}, 0, []int{2, 3}, []int{0, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := seedFetch(t, n, map[peer.ID][]bool{"a": both, "c": both})
			for _, i := range tc.missed {
				f.setHave(i)
				f.remaining--
			}
			now := time.Now()
			cursor := 0
			if got := f.pick("a", &cursor, len(tc.ask), false, now.Add(-tc.ago)); !slices.Equal(got, tc.ask) {
				t.Fatalf("asked a for %v, want %v", got, tc.ask)
			}
			got := f.pick("c", &cursor, n, true, now)
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("an idle worker at c picked %v, want %v", got, tc.want)
			}
		})
	}
}
