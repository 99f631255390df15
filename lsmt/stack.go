package lsmt

import (
	"fmt"
)

// MaxLayers is the most lower layers a Stack (or Merge) takes: a layer's level
// must fit a record's 8-bit tag, with room for the writable upper.
const MaxLayers = 255

// Stack is a virtual disk made of read-only lower layers and an optional
// writable upper. The lower layers' indexes are merged once, in NewStack, so
// a read is a binary search plus direct reads from the owning layers; the
// upper's index is consulted first and its gaps fall through to the merged
// lower index. Safe for concurrent ReadAt, WriteAt and Discard.
type Stack struct {
	lower   []Layer
	merged  []Segment // Tag = level in lower
	upper   *Writable
	vsize   int64
	readSeg readSegmentFunc
}

// NewStack stacks lower (lowest first, at most MaxLayers) under the optional
// upper. The stack's virtual size is that of the top-most layer with a
// non-zero virtual size.
func NewStack(lower []Layer, upper *Writable) (*Stack, error) {
	if len(lower) > MaxLayers {
		return nil, fmt.Errorf("lsmt: stack of %d lower layers: %w (max %d)", len(lower), ErrTooManyLayers, MaxLayers)
	}
	for i, l := range lower {
		if l == nil {
			return nil, fmt.Errorf("lsmt: stack: lower layer %d is nil", i)
		}
	}
	s := &Stack{lower: lower, merged: mergeIndexes(lower), upper: upper, vsize: topVirtualSize(lower)}
	if upper != nil && upper.VirtualSize() != 0 {
		s.vsize = upper.VirtualSize()
	}
	s.readSeg = func(p []byte, moffset int64, seg Segment) error {
		_, err := s.lower[seg.Tag].ReadData(p, moffset)
		return err
	}
	return s, nil
}

// mergeIndexes merges the layers' indexes (lowest first), upper layers
// winning; each segment's Tag is its layer's level.
func mergeIndexes(layers []Layer) []Segment {
	var merged []Segment
	for i := len(layers) - 1; i >= 0; i-- {
		merged = overlay(merged, withTag(layers[i].Segments(), uint8(i)))
	}
	return merged
}

func topVirtualSize(layers []Layer) int64 {
	for i := len(layers) - 1; i >= 0; i-- {
		if v := layers[i].VirtualSize(); v != 0 {
			return v
		}
	}
	return 0
}

// ReadAt reads the stacked virtual disk; ranges no layer holds read as zeros.
func (s *Stack) ReadAt(p []byte, off int64) (int, error) {
	q, eof := clampRead(p, off, s.vsize)
	if q == nil {
		return 0, eof
	}
	var err error
	if s.upper == nil {
		err = s.readLower(q, off)
	} else {
		start, end := sectorSpan(off, len(q))
		err = fill(q, off, s.upper.lookup(start, end), s.upper.readSeg, s.readLower)
	}
	if err != nil {
		return 0, fmt.Errorf("lsmt: stack: read %d bytes at %d: %w", len(q), off, err)
	}
	return len(q), eof
}

// readLower reads logical bytes at off from the merged lower layers.
func (s *Stack) readLower(p []byte, off int64) error {
	start, end := sectorSpan(off, len(p))
	return fill(p, off, overlapping(s.merged, start, end), s.readSeg, zeroHole)
}

// WriteAt writes to the upper layer (sector aligned); ErrReadOnly without one.
func (s *Stack) WriteAt(p []byte, off int64) (int, error) {
	if s.upper == nil {
		return 0, fmt.Errorf("lsmt: stack: write at %d: %w", off, ErrReadOnly)
	}
	return s.upper.WriteAt(p, off)
}

// Discard zeroes a range in the upper layer; ErrReadOnly without one.
func (s *Stack) Discard(off, n int64) error {
	if s.upper == nil {
		return fmt.Errorf("lsmt: stack: discard at %d: %w", off, ErrReadOnly)
	}
	return s.upper.Discard(off, n)
}

// Sync makes the upper layer durable; nil without one.
func (s *Stack) Sync() error {
	if s.upper == nil {
		return nil
	}
	return s.upper.Sync()
}

// Close closes the upper layer. Lower layers are the caller's to close.
func (s *Stack) Close() error {
	if s.upper == nil {
		return nil
	}
	return s.upper.Close()
}

// Size returns the virtual disk size in bytes.
func (s *Stack) Size() int64 { return s.vsize }

// VirtualSize returns the virtual disk size in bytes (same as Size).
func (s *Stack) VirtualSize() int64 { return s.vsize }

// Upper returns the writable upper layer, or nil.
func (s *Stack) Upper() *Writable { return s.upper }

// Segments returns the merged index of the whole stack; Tag is the owning
// layer's level (len(lower) for the upper).
func (s *Stack) Segments() []Segment {
	if s.upper == nil {
		return append([]Segment(nil), s.merged...)
	}
	return overlay(withTag(s.upper.Segments(), uint8(len(s.lower))), s.merged)
}
