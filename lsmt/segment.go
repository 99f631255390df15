package lsmt

import "encoding/binary"

const (
	// SectorSize is the unit of every offset and length in an LSMT index.
	SectorSize = 512
	// MaxSegmentLength is the largest length (in sectors) a record can hold.
	MaxSegmentLength = 1<<14 - 1
	// RecordSize is the size of one encoded index record.
	RecordSize = 16

	// maxRecordSectors caps a record written by a writable layer at 4 MiB, as upstream does.
	maxRecordSectors = 4 << 20 / SectorSize
	// invalidOffset marks the padding records of a committed index.
	invalidOffset = 1<<50 - 1
	offsetMask    = 1<<50 - 1
	moffsetMask   = 1<<55 - 1
	zeroedBit     = 1 << 55
)

// Segment maps Length sectors of the virtual disk starting at sector Offset to
// the layer's data at sector MOffset (absolute in the layer's file). A zeroed
// segment reads as zeros and stores no data. Tag is 0 on disk; in a merged
// index it holds the level of the layer owning the segment.
type Segment struct {
	Offset  uint64
	Length  uint32
	MOffset uint64
	Zeroed  bool
	Tag     uint8
}

// End returns the first sector after the segment.
func (s Segment) End() uint64 { return s.Offset + uint64(s.Length) }

// EncodeSegment writes s as a 16-byte index record into b[:16]. Fields wider
// than the record's bit fields are truncated; callers keep them in range.
func EncodeSegment(s Segment, b []byte) {
	w0 := s.Offset&offsetMask | uint64(s.Length)<<50
	w1 := s.MOffset&moffsetMask | uint64(s.Tag)<<56
	if s.Zeroed {
		w1 |= zeroedBit
	}
	binary.LittleEndian.PutUint64(b[0:8], w0)
	binary.LittleEndian.PutUint64(b[8:16], w1)
}

// DecodeSegment reads a 16-byte index record from b[:16].
func DecodeSegment(b []byte) Segment {
	w0 := binary.LittleEndian.Uint64(b[0:8])
	w1 := binary.LittleEndian.Uint64(b[8:16])
	return Segment{
		Offset:  w0 & offsetMask,
		Length:  uint32(w0 >> 50),
		MOffset: w1 & moffsetMask,
		Zeroed:  w1&zeroedBit != 0,
		Tag:     uint8(w1 >> 56),
	}
}

// isPadding reports whether s is an "invalid" record that pads a committed index.
func (s Segment) isPadding() bool { return s.Offset == invalidOffset }

// clip returns the part of s covering sectors [start, end), which must lie
// inside s. The data offset moves with the start for data segments.
func (s Segment) clip(start, end uint64) Segment {
	if !s.Zeroed {
		s.MOffset += start - s.Offset
	}
	s.Offset = start
	s.Length = uint32(end - start)
	return s
}

// splitRecords appends to dst the records covering sectors [offset, offset+n)
// starting at data sector moffset, each at most maxRecordSectors long. Zeroed
// records all carry moffset, like upstream's log.
func splitRecords(dst []Segment, offset, n, moffset uint64, zeroed bool) []Segment {
	for n > 0 {
		l := min(n, maxRecordSectors)
		dst = append(dst, Segment{Offset: offset, Length: uint32(l), MOffset: moffset, Zeroed: zeroed})
		offset += l
		n -= l
		if !zeroed {
			moffset += l
		}
	}
	return dst
}

// overlapping returns the sub-slice of the sorted, non-overlapping segs that
// intersects sectors [start, end).
func overlapping(segs []Segment, start, end uint64) []Segment {
	lo, hi := 0, len(segs)
	for lo < hi { // first segment ending after start
		m := int(uint(lo+hi) >> 1)
		if segs[m].End() <= start {
			lo = m + 1
		} else {
			hi = m
		}
	}
	first := lo
	hi = len(segs)
	for lo < hi { // first segment starting at or after end
		m := int(uint(lo+hi) >> 1)
		if segs[m].Offset < end {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return segs[first:lo]
}

// overlay merges two sorted, non-overlapping indexes: every upper segment is
// kept, and lower segments fill only the ranges no upper segment covers.
func overlay(upper, lower []Segment) []Segment {
	out := make([]Segment, 0, len(upper)+len(lower))
	u := 0
	for _, l := range lower {
		cur := l.Offset
		for cur < l.End() {
			for u < len(upper) && upper[u].End() <= cur {
				out = append(out, upper[u])
				u++
			}
			if u < len(upper) && upper[u].Offset <= cur {
				cur = upper[u].End() // covered by the upper segment, emitted later
				continue
			}
			stop := l.End()
			if u < len(upper) && upper[u].Offset < stop {
				stop = upper[u].Offset
			}
			out = append(out, l.clip(cur, stop))
			cur = stop
		}
	}
	return append(out, upper[u:]...)
}

// withTag returns a copy of segs with every Tag set to tag.
func withTag(segs []Segment, tag uint8) []Segment {
	out := make([]Segment, len(segs))
	for i, s := range segs {
		s.Tag = tag
		out[i] = s
	}
	return out
}
