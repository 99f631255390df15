package lsmt

import (
	"math/rand/v2"
	"testing"
)

// TestSegIndexAgainstSectorMap checks newest-wins insertion and cuts against a
// per-sector map, with enough segments to exercise chunk splits and removals.
func TestSegIndexAgainstSectorMap(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	const sectors = 20000
	type cell struct {
		set    bool
		moff   uint64
		zeroed bool
	}
	model := make([]cell, sectors)
	var x segIndex
	var next uint64 = 8
	for op := 0; op < 6000; op++ {
		off := rng.Uint64N(sectors - 1)
		n := 1 + rng.Uint64N(min(sectors-off, 64))
		if op%500 == 499 { // large overwrite spanning many chunks
			n = min(sectors-off, 3000)
		}
		switch r := rng.IntN(10); {
		case r < 2:
			x.cut(off, off+n)
			for s := off; s < off+n; s++ {
				model[s] = cell{}
			}
		default:
			zeroed := r == 2
			x.insert(Segment{Offset: off, Length: uint32(n), MOffset: next, Zeroed: zeroed})
			for s := off; s < off+n; s++ {
				model[s] = cell{set: true, moff: next + s - off, zeroed: zeroed}
			}
			next += n
		}
	}
	got := make([]cell, sectors)
	segs := x.all()
	if len(segs) != x.n {
		t.Fatalf("all() has %d segments, count says %d", len(segs), x.n)
	}
	for i, s := range segs {
		if s.Length == 0 || (i > 0 && s.Offset < segs[i-1].End()) {
			t.Fatalf("segment %d %+v empty, unsorted or overlapping", i, s)
		}
		for k := uint64(0); k < uint64(s.Length); k++ {
			c := cell{set: true, zeroed: s.Zeroed}
			if !s.Zeroed {
				c.moff = s.MOffset + k
			}
			got[s.Offset+k] = c
		}
	}
	for s := range model {
		want := model[s]
		if want.zeroed {
			want.moff = 0
		}
		if got[s] != want {
			t.Fatalf("sector %d: index %+v, model %+v", s, got[s], want)
		}
	}
	if len(x.chunks) < 2 {
		t.Errorf("only %d chunks: test did not exercise chunking", len(x.chunks))
	}
	// appendOverlapping returns clipped pieces covering exactly the set sectors.
	clipped := x.appendOverlapping(nil, 100, 5000)
	var covered uint64
	for _, s := range clipped {
		if s.Offset < 100 || s.End() > 5000 {
			t.Fatalf("piece %+v not clipped to [100, 5000)", s)
		}
		covered += uint64(s.Length)
	}
	var want uint64
	for s := 100; s < 5000; s++ {
		if model[s].set {
			want++
		}
	}
	if covered != want {
		t.Errorf("clipped pieces cover %d sectors, want %d", covered, want)
	}
}
