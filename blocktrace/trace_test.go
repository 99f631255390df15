package blocktrace

import (
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
	"pgregory.net/rapid"
)

// TestMergeMatchesModel: Merge's ranges cover the bytes the input covers plus every hole of
// at most gap bytes between them, and no more; they are sorted, apart by more than gap, and
// each was first read when the earliest input range inside it was.
func TestMergeMatchesModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		const domain = 200
		gap := rapid.Int64Range(0, 20).Draw(t, "gap")
		var in []Range
		var covered [domain]bool
		for i := range rapid.IntRange(0, 20).Draw(t, "ranges") {
			off := rapid.Int64Range(0, domain-1).Draw(t, "off")
			n := rapid.Int64Range(1, domain-off).Draw(t, "len")
			first := int64(0)
			if rapid.Bool().Draw(t, "known") {
				first = int64(i) + 1
			}
			in = append(in, Range{Off: off, Len: n, First: first})
			for b := off; b < off+n; b++ {
				covered[b] = true
			}
		}
		// The model: holes of at most gap bytes between covered bytes are filled.
		want := covered
		last := int64(-1)
		for b := range int64(domain) {
			if !covered[b] {
				continue
			}
			if last >= 0 && b-last-1 <= gap {
				for h := last + 1; h < b; h++ {
					want[h] = true
				}
			}
			last = b
		}
		out := Merge(slices.Clone(in), gap)
		var got [domain]bool
		for i, r := range out {
			if r.Len <= 0 || r.Off < 0 || r.Off+r.Len > domain {
				t.Fatalf("range %+v out of the domain", r)
			}
			if i > 0 && r.Off-(out[i-1].Off+out[i-1].Len) <= gap {
				t.Fatalf("ranges %+v and %+v should have been merged (gap %d)", out[i-1], r, gap)
			}
			for b := r.Off; b < r.Off+r.Len; b++ {
				got[b] = true
			}
			wantFirst := int64(0)
			for _, p := range in {
				if p.Off >= r.Off && p.Off+p.Len <= r.Off+r.Len && p.First > 0 && (wantFirst == 0 || p.First < wantFirst) {
					wantFirst = p.First
				}
			}
			if r.First != wantFirst {
				t.Fatalf("range %+v: First %d, want %d (input %+v)", r, r.First, wantFirst, in)
			}
		}
		if got != want {
			t.Fatalf("Merge(%+v, %d) = %+v covers %v, want %v", in, gap, out, got, want)
		}
	})
}

func TestCompareFirst(t *testing.T) {
	rs := []Range{{Off: 1, First: 0}, {Off: 2, First: 3}, {Off: 3, First: 1}}
	slices.SortStableFunc(rs, CompareFirst)
	if want := []Range{{Off: 3, First: 1}, {Off: 2, First: 3}, {Off: 1, First: 0}}; !slices.Equal(rs, want) {
		t.Fatalf("sorted %+v, want %+v", rs, want)
	}
}

func TestPin(t *testing.T) {
	d, other, table := digest.FromString("d"), digest.FromString("o"), digest.FromString("t")
	tr := Trace{Blobs: []Blob{{Ref: "a/b", Digest: d, Size: 10}, {Ref: "c/d", Digest: other, Size: 10, RangeTable: table, RangeTableOffset: 5}}}
	if !tr.Pin(d, "x/y", table, 8) || tr.Blobs[0].Ref != "x/y" || tr.Blobs[0].RangeTable != table || tr.Blobs[0].RangeTableOffset != 8 {
		t.Fatalf("pinned %+v", tr.Blobs[0])
	}
	if tr.Pin(d, "", table, 8) {
		t.Fatal("pinning the same again reports a change")
	}
	if !tr.Pin(other, "", "", 0) || tr.Blobs[1].RangeTable != "" || tr.Blobs[1].Ref != "c/d" {
		t.Fatalf("unpinned %+v", tr.Blobs[1])
	}
	if tr.Pin(digest.FromString("absent"), "z/z", table, 1) {
		t.Fatal("a blob the trace lacks reports a change")
	}
}
