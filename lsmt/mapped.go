package lsmt

import (
	"fmt"
	"io"
)

// Mapped is a layer whose data lives in another file: its segments' MOffset
// counts sectors from that file's first byte (no header). Indexed OCI layers
// use it to map ext4 file blocks onto the file contents inside a layer's
// uncompressed tar stream. Safe for concurrent use if data is.
type Mapped struct {
	data     io.ReaderAt
	dataSize int64
	name     string
	segs     []Segment
	vsize    int64
}

// NewMapped checks segs (sorted, non-overlapping, lengths 1 to
// MaxSegmentLength, inside a virtual disk of vsize bytes, data segments inside
// the dataSize bytes of data rounded up to a sector) and returns the layer.
// Bytes of the last sector past dataSize read as zeros. segs is kept.
func NewMapped(segs []Segment, data io.ReaderAt, dataSize, vsize int64, name string) (*Mapped, error) {
	if vsize <= 0 || vsize%SectorSize != 0 || vsize > 1<<62 || dataSize < 0 {
		return nil, fmt.Errorf("lsmt: mapped layer %s: %w: virtual size %d, data size %d", name, ErrFormat, vsize, dataSize)
	}
	dataSectors := uint64(dataSize+SectorSize-1) / SectorSize
	for i, s := range segs {
		switch {
		case s.Length == 0 || s.Length > MaxSegmentLength:
			return nil, fmt.Errorf("lsmt: mapped layer %s: %w: record %d: length %d", name, ErrFormat, i, s.Length)
		case i > 0 && s.Offset < segs[i-1].End():
			return nil, fmt.Errorf("lsmt: mapped layer %s: %w: record %d at sector %d: unsorted or overlaps the previous one", name, ErrFormat, i, s.Offset)
		case s.End() > uint64(vsize)/SectorSize:
			return nil, fmt.Errorf("lsmt: mapped layer %s: %w: record %d: sectors [%d, %d) past the virtual disk", name, ErrFormat, i, s.Offset, s.End())
		case s.Tag != 0:
			return nil, fmt.Errorf("lsmt: mapped layer %s: %w: record %d: tag %d", name, ErrFormat, i, s.Tag)
		case !s.Zeroed && s.MOffset+uint64(s.Length) > dataSectors:
			return nil, fmt.Errorf("lsmt: mapped layer %s: %w: record %d: data sectors [%d, %d) outside the %d-byte data",
				name, ErrFormat, i, s.MOffset, s.MOffset+uint64(s.Length), dataSize)
		}
	}
	return &Mapped{data: data, dataSize: dataSize, name: name, segs: segs, vsize: vsize}, nil
}

// ReadAt reads the virtual disk; holes and zeroed ranges read as zeros.
func (m *Mapped) ReadAt(p []byte, off int64) (int, error) {
	q, eof := clampRead(p, off, m.vsize)
	if q == nil {
		return 0, eof
	}
	start, end := sectorSpan(off, len(q))
	read := func(p []byte, moffset int64, _ Segment) error {
		_, err := m.ReadData(p, moffset)
		return err
	}
	if err := fill(q, off, overlapping(m.segs, start, end), read, zeroHole); err != nil {
		return 0, fmt.Errorf("lsmt: %s: read %d bytes at %d: %w", m.name, len(q), off, err)
	}
	return len(q), eof
}

// ReadData reads the data file at moffset; past its end it reads zeros.
func (m *Mapped) ReadData(p []byte, moffset int64) (int, error) {
	n := len(p)
	if moffset+int64(n) > m.dataSize {
		tail := max(0, m.dataSize-moffset)
		clear(p[tail:])
		p = p[:tail]
	}
	if len(p) > 0 {
		if _, err := readData(m.data, m.name, p, moffset); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// VirtualSize returns the virtual disk size in bytes.
func (m *Mapped) VirtualSize() int64 { return m.vsize }

// Segments returns the index; the slice is shared: do not modify it.
func (m *Mapped) Segments() []Segment { return m.segs }
