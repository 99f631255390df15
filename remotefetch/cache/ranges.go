package cache

import (
	"cmp"
	"slices"
)

// rangeSet is a set of byte ranges [lo, hi) kept sorted and merged: the bytes of a blob
// committed outside whole units, or the bytes a Writer has stored. It lives in memory only;
// its owner guards it.
type rangeSet struct {
	ranges []byteRange
}

type byteRange struct{ lo, hi int64 }

// add inserts [lo, hi), merging it with the ranges it overlaps or touches.
func (s *rangeSet) add(lo, hi int64) {
	if lo >= hi {
		return
	}
	// i: first range ending at or after lo; j: first range starting after hi.
	i, _ := slices.BinarySearchFunc(s.ranges, lo, func(r byteRange, lo int64) int { return cmp.Compare(r.hi, lo) })
	j := i
	for j < len(s.ranges) && s.ranges[j].lo <= hi {
		lo, hi = min(lo, s.ranges[j].lo), max(hi, s.ranges[j].hi)
		j++
	}
	s.ranges = slices.Replace(s.ranges, i, j, byteRange{lo, hi})
}

// covers reports whether [lo, hi) lies inside one range of the set.
func (s *rangeSet) covers(lo, hi int64) bool {
	i, _ := slices.BinarySearchFunc(s.ranges, lo, func(r byteRange, lo int64) int { return cmp.Compare(r.hi, lo+1) })
	return i < len(s.ranges) && s.ranges[i].lo <= lo && hi <= s.ranges[i].hi
}

// reset empties the set.
func (s *rangeSet) reset() { s.ranges = nil }
