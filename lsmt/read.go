package lsmt

import (
	"fmt"
	"io"
)

// Layer is one layer of a stack: a virtual disk plus direct access to the
// data its segments point at.
type Layer interface {
	// ReadAt reads the virtual disk; holes and zeroed ranges read as zeros.
	io.ReaderAt
	// VirtualSize is the virtual disk size in bytes (0 if unknown).
	VirtualSize() int64
	// Segments returns the index: sorted, non-overlapping, MOffset in the
	// layer's own file.
	Segments() []Segment
	// ReadData reads len(p) bytes of the layer's file at physical byte offset
	// moffset; a short read is an error.
	ReadData(p []byte, moffset int64) (int, error)
}

// readSegmentFunc reads the stored bytes of segment s at physical byte offset moffset into p.
type readSegmentFunc func(p []byte, moffset int64, s Segment) error

// holeFunc fills p with the bytes of logical byte offset off that no segment covers.
type holeFunc func(p []byte, off int64) error

func zeroHole(p []byte, _ int64) error {
	clear(p)
	return nil
}

// fill composes logical bytes [off, off+len(p)) from segs (sorted, each
// intersecting that range): zeroed segments read as zeros, data segments via
// read, and the gaps between them via hole.
func fill(p []byte, off int64, segs []Segment, read readSegmentFunc, hole holeFunc) error {
	pos, end := off, off+int64(len(p))
	for _, s := range segs {
		segStart := int64(s.Offset) * SectorSize
		from := max(segStart, off)
		to := min(int64(s.End())*SectorSize, end)
		if from >= to {
			continue
		}
		if from > pos {
			if err := hole(p[pos-off:from-off], pos); err != nil {
				return err
			}
		}
		dst := p[from-off : to-off]
		if s.Zeroed {
			clear(dst)
		} else if err := read(dst, int64(s.MOffset)*SectorSize+from-segStart, s); err != nil {
			return err
		}
		pos = to
	}
	if pos < end {
		return hole(p[pos-off:], pos)
	}
	return nil
}

// sectorSpan returns the sectors [start, end) holding bytes [off, off+n).
func sectorSpan(off int64, n int) (uint64, uint64) {
	return uint64(off) / SectorSize, (uint64(off) + uint64(n) + SectorSize - 1) / SectorSize
}

// clampRead trims a read of p at off to a virtual disk of vsize bytes. It
// returns the part to fill and the error to report with it (io.EOF when trimmed).
func clampRead(p []byte, off, vsize int64) ([]byte, error) {
	if off < 0 {
		return nil, fmt.Errorf("lsmt: read at negative offset %d: %w", off, ErrRange)
	}
	if off >= vsize {
		return p[:0], io.EOF
	}
	if int64(len(p)) > vsize-off {
		return p[:vsize-off], io.EOF
	}
	return p, nil
}

// readData implements Layer.ReadData for a layer whose file is r, naming the
// layer in errors.
func readData(r io.ReaderAt, name string, p []byte, moffset int64) (int, error) {
	n, err := readFull(r, p, moffset)
	if err != nil {
		return n, fmt.Errorf("lsmt: %s: read data at %d: %w", name, moffset, err)
	}
	return n, nil
}

// readFull reads len(p) bytes at off from r, turning a short read into an error.
func readFull(r io.ReaderAt, p []byte, off int64) (int, error) {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return n, nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}
