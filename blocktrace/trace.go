// Package blocktrace is the block-trace file format: which byte ranges of which registry blobs
// a container start read, numbered by when each was first read. remotefetch records a trace
// (Fetcher.StartTrace, StopTrace) and replays one into its cache (Fetcher.Prefetch); bdd hands
// traces over its API; tracestore keeps them, one per image. It sits beside the read path of
// docs/DESIGN.md at its bottom box: a trace's ranges are ranges of the blobs remotefetch reads
// from the registry. Encoded traces are JSON, version 1; Decode takes them from untrusted sources.
package blocktrace

import (
	"cmp"
	"math"
	"slices"

	"github.com/opencontainers/go-digest"
)

// Trace lists which ranges of which blobs were read while tracing, e.g. during a container's
// start, blobs in the order they were first read.
type Trace struct {
	Blobs []Blob `json:"blobs"`
}

// Blob is one blob of a Trace: where it is (Ref, the image reference it was read through),
// what it is (Digest, Size) and which of its bytes were read. A recorded blob's ranges are
// sorted and merged (Merge with gap 0); a valid one's need not be.
type Blob struct {
	Ref    string        `json:"ref"`
	Digest digest.Digest `json:"digest"`
	Size   int64         `json:"size"`
	Ranges []Range       `json:"ranges"`
	// RangeTable and RangeTableOffset pin the blob's range table, when it has one, so a
	// replay fetches into the cache entry of the devices that check against that table.
	// They are a hint like the rest: whoever replays a trace for an image should set them
	// from the image's manifest.
	RangeTable       digest.Digest `json:"rangeTable,omitempty"`
	RangeTableOffset int64         `json:"rangeTableOffset,omitempty"`
}

// Range is the byte range [Off, Off+Len) of its blob. First orders the ranges of all blobs of
// a trace by when they were first read while recording (1 is the first read; 0 is unknown,
// and orders after every known one), so that a replay fetches first what the workload needs
// first.
type Range struct {
	Off   int64 `json:"off"`
	Len   int64 `json:"len"`
	First int64 `json:"first,omitempty"`
}

// Merge sorts rs by offset, in place, and returns the ranges that cover what they cover,
// joining those that overlap, touch or are at most gap bytes apart (the gap's bytes then
// belong to the joined range). A joined range was first read when the earliest of its parts
// was. rs must be valid ranges of one blob (Off >= 0, Len > 0, Off+Len without overflow);
// the result may share rs's array.
func Merge(rs []Range, gap int64) []Range {
	slices.SortFunc(rs, func(a, b Range) int { return cmp.Compare(a.Off, b.Off) })
	out := rs[:0]
	for _, r := range rs {
		if n := len(out); n > 0 && r.Off-(out[n-1].Off+out[n-1].Len) <= gap {
			last := &out[n-1]
			last.Len = max(last.Len, r.Off+r.Len-last.Off)
			last.First = min(firstOrLast(last.First), firstOrLast(r.First))
			if last.First == math.MaxInt64 {
				last.First = 0
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

// CompareFirst orders a and b by when they were first read, unknown (First 0) last: the
// order in which a replay fetches ranges.
func CompareFirst(a, b Range) int {
	return cmp.Compare(firstOrLast(a.First), firstOrLast(b.First))
}

// firstOrLast is a range's First for ordering: unknown (0) sorts after every known one.
func firstOrLast(first int64) int64 {
	if first <= 0 {
		return math.MaxInt64
	}
	return first
}

// Pin names blob d of the trace, if it has it, as a device of an image will read it: through
// repository ref, with the range table table at offset ("" and 0: none). A trace is a hint;
// whoever replays one for an image pins its blobs from the image's manifest, so the replay
// fills the cache entries the image's devices read (remotefetch keys them by table, or by
// repository for a blob without one). It reports whether anything changed.
func (t *Trace) Pin(d digest.Digest, ref string, table digest.Digest, offset int64) bool {
	changed := false
	for i := range t.Blobs {
		b := &t.Blobs[i]
		if b.Digest != d {
			continue
		}
		if ref != "" && b.Ref != ref {
			b.Ref, changed = ref, true
		}
		if b.RangeTable != table || b.RangeTableOffset != offset {
			b.RangeTable, b.RangeTableOffset, changed = table, offset, true
		}
	}
	return changed
}
