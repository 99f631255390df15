package lsmt

import (
	"fmt"
	"io"
)

// File is a committed (or sealed) LSMT layer: read-only, safe for concurrent use.
type File struct {
	r       io.ReaderAt
	name    string
	header  Header
	segs    []Segment
	vsize   int64
	readSeg readSegmentFunc
}

// OpenOption configures Open.
type OpenOption func(*openConfig)

type openConfig struct{ name string }

// WithName names the layer in error messages (a path or digest).
func WithName(name string) OpenOption { return func(c *openConfig) { c.name = name } }

// Open opens the committed LSMT layer of size bytes in r: a file written by
// Commit or upstream's overlaybd-commit, or a sealed writable data file. The
// header, trailer and whole index are validated (index sorted, no overlaps,
// data inside the data area) before Open returns; bad bytes give an error
// wrapping ErrFormat.
func Open(r io.ReaderAt, size int64, opts ...OpenOption) (*File, error) {
	cfg := openConfig{name: "layer"}
	for _, o := range opts {
		o(&cfg)
	}
	f, err := open(r, size, cfg.name)
	if err != nil {
		return nil, fmt.Errorf("lsmt: open %s: %w", cfg.name, err)
	}
	return f, nil
}

func open(r io.ReaderAt, size int64, name string) (*File, error) {
	if size < 2*HeaderSize {
		return nil, fmt.Errorf("%w: file of %d bytes is too short for header and trailer", ErrFormat, size)
	}
	buf := make([]byte, HeaderSize)
	if _, err := readFull(r, buf, 0); err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	header, err := ParseHeader(buf)
	if err != nil {
		return nil, fmt.Errorf("header: %w", err)
	}
	if header.Flags&FlagHeader == 0 {
		return nil, fmt.Errorf("%w: header flags %#x lack the header bit", ErrFormat, header.Flags)
	}
	if header.Flags&FlagSparse != 0 {
		return nil, fmt.Errorf("%w: sparse writable file (flags %#x); open its directory with OpenWritable", ErrFormat, header.Flags)
	}
	if _, err := readFull(r, buf, size-HeaderSize); err != nil {
		return nil, fmt.Errorf("read trailer: %w", err)
	}
	trailer, err := ParseHeader(buf)
	if err != nil {
		return nil, fmt.Errorf("trailer at %d: %w", size-HeaderSize, err)
	}
	if trailer.Flags&FlagHeader != 0 || trailer.Flags&FlagSealed == 0 {
		return nil, fmt.Errorf("%w: trailer flags %#x: want trailer with the sealed bit", ErrFormat, trailer.Flags)
	}
	segs, err := readIndex(r, size, trailer)
	if err != nil {
		return nil, err
	}
	header.IndexOffset, header.IndexSize = trailer.IndexOffset, trailer.IndexSize
	vsize := trailer.VirtualSize
	if vsize == 0 {
		vsize = header.VirtualSize
	}
	if vsize > 1<<62 {
		return nil, fmt.Errorf("%w: virtual size %d", ErrFormat, vsize)
	}
	f := &File{r: r, name: name, header: header, segs: segs, vsize: int64(vsize)}
	f.readSeg = func(p []byte, moffset int64, _ Segment) error {
		_, err := f.ReadData(p, moffset)
		return err
	}
	return f, nil
}

// indexPieceRecords is how many index records are read at a time (1 MiB).
const indexPieceRecords = 1 << 16

// readIndex reads and validates the committed index the trailer describes.
func readIndex(r io.ReaderAt, size int64, trailer Header) ([]Segment, error) {
	indexEnd := uint64(size - HeaderSize)
	off, n := trailer.IndexOffset, trailer.IndexSize
	switch {
	case off%SectorSize != 0 || off < HeaderSize:
		return nil, fmt.Errorf("%w: index offset %d not a sector multiple past the header", ErrFormat, off)
	case off > indexEnd || n > (indexEnd-off)/RecordSize:
		return nil, fmt.Errorf("%w: index of %d records at %d runs past the trailer at %d", ErrFormat, n, off, indexEnd)
	}
	// The index is read in pieces, so a claimed size costs memory only as its records
	// arrive and prove valid: a bad record stops the read early.
	dataEnd := off / SectorSize
	segs := make([]Segment, 0, min(n, indexPieceRecords))
	raw := make([]byte, min(n, indexPieceRecords)*RecordSize)
	for first := uint64(0); first < n; first += indexPieceRecords {
		piece := raw[:min(n-first, indexPieceRecords)*RecordSize]
		at := int64(off + first*RecordSize)
		if _, err := readFull(r, piece, at); err != nil {
			return nil, fmt.Errorf("read index at %d: %w", at, err)
		}
		for i := 0; i < len(piece); i += RecordSize {
			s := DecodeSegment(piece[i:])
			if s.isPadding() {
				continue
			}
			s.Tag = 0
			rec := first + uint64(i/RecordSize)
			switch {
			case s.Length == 0:
				return nil, fmt.Errorf("%w: index record %d: zero length", ErrFormat, rec)
			case len(segs) > 0 && s.Offset < segs[len(segs)-1].End():
				return nil, fmt.Errorf("%w: index record %d at sector %d: unsorted or overlaps the previous one ending at %d",
					ErrFormat, rec, s.Offset, segs[len(segs)-1].End())
			case !s.Zeroed && (s.MOffset < HeaderSize/SectorSize || s.MOffset+uint64(s.Length) > dataEnd):
				return nil, fmt.Errorf("%w: index record %d: data sectors [%d, %d) outside the data area [8, %d)",
					ErrFormat, rec, s.MOffset, s.MOffset+uint64(s.Length), dataEnd)
			}
			segs = append(segs, s)
		}
	}
	return segs, nil
}

// ReadAt reads the virtual disk. Holes and zeroed ranges read as zeros; a read
// reaching past the virtual size returns io.EOF with the bytes before it.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	q, eof := clampRead(p, off, f.vsize)
	if q == nil {
		return 0, eof
	}
	start, end := sectorSpan(off, len(q))
	if err := fill(q, off, overlapping(f.segs, start, end), f.readSeg, zeroHole); err != nil {
		return 0, fmt.Errorf("lsmt: %s: read %d bytes at %d: %w", f.name, len(q), off, err)
	}
	return len(q), eof
}

// ReadData reads the layer file's bytes at physical offset moffset.
func (f *File) ReadData(p []byte, moffset int64) (int, error) {
	return readData(f.r, f.name, p, moffset)
}

// VirtualSize returns the virtual disk size in bytes.
func (f *File) VirtualSize() int64 { return f.vsize }

// Size returns the virtual disk size, like VirtualSize, so a File serves
// where the read path expects an io.ReaderAt plus Size.
func (f *File) Size() int64 { return f.vsize }

// Segments returns the index (padding dropped). The slice is shared: do not modify it.
func (f *File) Segments() []Segment { return f.segs }

// Header returns the file's header with IndexOffset and IndexSize taken from
// the trailer.
func (f *File) Header() Header { return f.header }
