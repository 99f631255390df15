package lsmt

import (
	"slices"
	"sort"
)

// chunkMax bounds a chunk of the in-memory index; inserts cost O(chunkMax +
// n/chunkMax) element moves instead of O(n) for one flat slice.
const chunkMax = 512

// segIndex is the in-memory index of a writable layer: sorted, non-overlapping
// segments kept in chunks, supporting "insert a range, newest wins, split the
// overlapped ones". Not safe for concurrent use; Writable locks around it.
type segIndex struct {
	chunks [][]Segment // each non-empty and sorted; chunks ordered
	n      int
}

// seek returns the position of the first segment ending after sector off.
func (x *segIndex) seek(off uint64) (ci, i int) {
	ci = sort.Search(len(x.chunks), func(c int) bool {
		ch := x.chunks[c]
		return ch[len(ch)-1].End() > off
	})
	if ci == len(x.chunks) {
		return ci, 0
	}
	ch := x.chunks[ci]
	return ci, sort.Search(len(ch), func(j int) bool { return ch[j].End() > off })
}

// cut removes sectors [start, end) from the index, trimming or splitting the
// segments that straddle either edge.
func (x *segIndex) cut(start, end uint64) {
	ci, i := x.seek(start)
	for ci < len(x.chunks) {
		ch := x.chunks[ci]
		j := i
		for j < len(ch) && ch[j].Offset < end {
			j++
		}
		if j == i {
			return
		}
		last := ch[j-1]
		// Done unless the cut may go on into the next chunk; only then can
		// this chunk not have grown (no right piece), so it was not split.
		done := j < len(ch) || last.End() >= end
		var keep [2]Segment
		k := 0
		if ch[i].Offset < start {
			keep[k] = ch[i].clip(ch[i].Offset, start)
			k++
		}
		if last.End() > end {
			keep[k] = last.clip(end, last.End())
			k++
		}
		x.chunks[ci] = slices.Replace(ch, i, j, keep[:k]...)
		x.n += k - (j - i)
		if x.rebalance(ci) && !done {
			ci++
		}
		if done {
			return
		}
		i = 0
	}
}

// insert adds s; it wins over whatever it overlaps.
func (x *segIndex) insert(s Segment) {
	x.cut(s.Offset, s.End())
	ci, i := x.seek(s.Offset)
	switch {
	case len(x.chunks) == 0:
		x.chunks = [][]Segment{{s}}
		x.n++
		return
	case ci == len(x.chunks):
		ci--
		i = len(x.chunks[ci])
	}
	x.chunks[ci] = slices.Insert(x.chunks[ci], i, s)
	x.n++
	x.rebalance(ci)
}

// rebalance drops chunk ci if empty or splits it if too large; it reports
// whether chunk ci still exists.
func (x *segIndex) rebalance(ci int) bool {
	ch := x.chunks[ci]
	switch {
	case len(ch) == 0:
		x.chunks = slices.Delete(x.chunks, ci, ci+1)
		return false
	case len(ch) > chunkMax:
		half := len(ch) / 2
		right := slices.Clone(ch[half:])
		x.chunks[ci] = slices.Clip(ch[:half])
		x.chunks = slices.Insert(x.chunks, ci+1, right)
	}
	return true
}

// appendOverlapping appends to dst the segments intersecting sectors
// [start, end), clipped to that range.
func (x *segIndex) appendOverlapping(dst []Segment, start, end uint64) []Segment {
	ci, i := x.seek(start)
	for ; ci < len(x.chunks); ci, i = ci+1, 0 {
		for _, s := range x.chunks[ci][i:] {
			if s.Offset >= end {
				return dst
			}
			dst = append(dst, s.clip(max(s.Offset, start), min(s.End(), end)))
		}
	}
	return dst
}

// all returns a copy of every segment in order.
func (x *segIndex) all() []Segment {
	out := make([]Segment, 0, x.n)
	for _, ch := range x.chunks {
		out = append(out, ch...)
	}
	return out
}
