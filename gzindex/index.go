// Package gzindex is a seek index for an OCI layer blob: it serves the
// uncompressed tar stream of a gzip (or uncompressed) layer as an io.ReaderAt
// over the unchanged blob, fetching and inflating only the spans a read needs.
//
// It is a format box of the read path (docs/DESIGN.md): an index (Index, made
// by Build in one pass over the blob, encoded by Encode and decoded by Decode)
// holds zran-style checkpoints: the bit offset of a deflate block boundary in
// the blob, the uncompressed offset there and the 32 KiB window before it, so
// decoding can start at any checkpoint. Each span between checkpoints also
// carries the SHA-256 of its compressed bytes, so a range read of the blob is
// verified before it is inflated. NewReader serves the uncompressed stream,
// caching whole inflated spans (bounded) so neighbouring reads inflate a span
// once. The byte format is docs/FORMAT.md's "Seek index" section.
package gzindex

import (
	"bytes"
	"compress/flate"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Kind says how the blob is compressed.
type Kind uint8

const (
	// KindGzip is a gzip blob (one or more members).
	KindGzip Kind = 1
	// KindRaw is an uncompressed blob: the stream is the blob itself and spans
	// carry only digests.
	KindRaw Kind = 2
)

func (k Kind) String() string {
	switch k {
	case KindGzip:
		return "gzip"
	case KindRaw:
		return "raw"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Limits of an index. The span caps bound the memory one read may take.
const (
	MaxSpans           = 1 << 20
	MaxSpanBytes       = 64 << 20 // uncompressed bytes of one span
	MaxSpanStoredBytes = 2 * MaxSpanBytes
	MaxBlobSize        = 1 << 44
	MaxRatio           = 1032 // deflate's own limit of uncompressed to compressed bytes
	DefaultSpacing     = 1 << 20
	headerSize         = 40
	spanRecordSize     = 56
	magic              = "OBDGZIX1"
	MinSpacing         = 64 << 10
	// maxPackedWindow bounds a compressed window: deflate's stored blocks add 5
	// bytes per 64 KiB to incompressible data.
	maxPackedWindow = WindowSize + 64
)

// ErrBadIndex reports an index that is not valid for its blob.
var ErrBadIndex = errors.New("gzindex: bad index")

func bad(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadIndex, fmt.Sprintf(format, args...))
}

// Span is one checkpoint and the stretch of stream up to the next one.
type Span struct {
	// InBit is the bit offset in the blob where decoding starts: 0 for the
	// first span (the gzip header), else a deflate block boundary. For a raw
	// blob, 8 × Out.
	InBit int64
	// Out is the uncompressed offset at InBit.
	Out int64
	// Digest is the SHA-256 of the blob bytes [InBit/8, end), where end is
	// ⌈next InBit/8⌉, or the blob's size for the last span.
	Digest [sha256.Size]byte
	// Window is the 32 KiB of output before Out (less at the stream's start);
	// empty for a raw blob and for the first span. A decoded index leaves it nil
	// and keeps the window compressed until a read needs it (Span.window).
	Window []byte

	windowLen int    // of a decoded span: the window's length
	packed    []byte // of a decoded span: the window, raw deflate
}

// WindowLen is the length of the span's window.
func (s *Span) WindowLen() int {
	if s.packed != nil {
		return s.windowLen
	}
	return len(s.Window)
}

// window returns the span's window, inflating a decoded one.
func (s *Span) window() ([]byte, error) {
	if s.packed == nil {
		return s.Window, nil
	}
	w := make([]byte, s.windowLen)
	r := flate.NewReader(bytes.NewReader(s.packed))
	if _, err := io.ReadFull(r, w); err != nil {
		return nil, bad("window of %d bytes: %v", s.windowLen, err)
	}
	if n, err := r.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		return nil, bad("window longer than %d bytes", s.windowLen)
	}
	return w, nil
}

// packWindow returns the span's window compressed as it is encoded.
func (s *Span) packWindow() []byte {
	if s.packed != nil || len(s.Window) == 0 {
		return s.packed
	}
	var b bytes.Buffer
	w, _ := flate.NewWriter(&b, flate.DefaultCompression) // a valid level never fails
	w.Write(s.Window)
	w.Close()
	return b.Bytes()
}

// Index is the decoded seek index of one blob.
type Index struct {
	Kind     Kind
	BlobSize int64 // compressed bytes
	Size     int64 // uncompressed bytes
	Spans    []Span
}

// stored returns the blob byte range span i covers.
func (x *Index) stored(i int) (start, end int64) {
	start = x.Spans[i].InBit / 8
	if i+1 < len(x.Spans) {
		end = (x.Spans[i+1].InBit + 7) / 8
	} else {
		end = x.BlobSize
	}
	return start, end
}

// spanEnd returns the uncompressed end of span i.
func (x *Index) spanEnd(i int) int64 {
	if i+1 < len(x.Spans) {
		return x.Spans[i+1].Out
	}
	return x.Size
}

// Encode returns the index's bytes (docs/FORMAT.md, "Seek index").
func (x *Index) Encode() []byte {
	packed := make([][]byte, len(x.Spans))
	n := headerSize + spanRecordSize*len(x.Spans)
	for i := range x.Spans {
		packed[i] = x.Spans[i].packWindow()
		n += len(packed[i])
	}
	b := make([]byte, headerSize, n)
	copy(b, magic)
	b[8] = byte(x.Kind)
	binary.LittleEndian.PutUint64(b[16:], uint64(x.BlobSize))
	binary.LittleEndian.PutUint64(b[24:], uint64(x.Size))
	binary.LittleEndian.PutUint32(b[32:], uint32(len(x.Spans)))
	var rec [spanRecordSize]byte
	for i, s := range x.Spans {
		binary.LittleEndian.PutUint64(rec[0:], uint64(s.InBit))
		binary.LittleEndian.PutUint64(rec[8:], uint64(s.Out))
		copy(rec[16:48], s.Digest[:])
		binary.LittleEndian.PutUint32(rec[48:], uint32(s.WindowLen()))
		binary.LittleEndian.PutUint32(rec[52:], uint32(len(packed[i])))
		b = append(b, rec[:]...)
	}
	for _, p := range packed {
		b = append(b, p...)
	}
	return b
}

// Decode parses and validates an encoded index. Every field is checked
// against the others (see Validate); windows alias b.
func Decode(b []byte) (*Index, error) {
	if len(b) < headerSize || !bytes.Equal(b[:8], []byte(magic)) {
		return nil, bad("no %q header", magic)
	}
	if !allZero(b[9:16]) || !allZero(b[36:40]) {
		return nil, bad("reserved header bytes are not zero")
	}
	x := &Index{Kind: Kind(b[8])}
	blob, size := binary.LittleEndian.Uint64(b[16:]), binary.LittleEndian.Uint64(b[24:])
	n := binary.LittleEndian.Uint32(b[32:])
	if blob > MaxBlobSize || size > MaxBlobSize*MaxRatio {
		return nil, bad("blob of %d bytes or stream of %d bytes over the limit", blob, size)
	}
	x.BlobSize, x.Size = int64(blob), int64(size)
	if n == 0 || n > MaxSpans {
		return nil, bad("%d spans (1 to %d allowed)", n, MaxSpans)
	}
	recs := headerSize + int(n)*spanRecordSize
	if len(b) < recs {
		return nil, bad("%d spans need %d bytes, index has %d", n, recs, len(b))
	}
	x.Spans = make([]Span, n)
	off := recs
	for i := range x.Spans {
		r := b[headerSize+i*spanRecordSize:]
		s := &x.Spans[i]
		in, out := binary.LittleEndian.Uint64(r[0:]), binary.LittleEndian.Uint64(r[8:])
		if in > MaxBlobSize*8 || out > MaxBlobSize*MaxRatio {
			return nil, bad("span %d: offsets %d/%d out of range", i, in, out)
		}
		s.InBit, s.Out = int64(in), int64(out)
		copy(s.Digest[:], r[16:48])
		w, packed := binary.LittleEndian.Uint32(r[48:]), binary.LittleEndian.Uint32(r[52:])
		if w > WindowSize || (w == 0) != (packed == 0) || packed > maxPackedWindow || int(packed) > len(b)-off {
			return nil, bad("span %d: window of %d bytes in %d: too long, or past the index's end", i, w, packed)
		}
		s.windowLen = int(w)
		if packed > 0 {
			s.packed = b[off : off+int(packed) : off+int(packed)]
		}
		off += int(packed)
	}
	if off != len(b) {
		return nil, bad("%d bytes after the last window", len(b)-off)
	}
	if err := x.Validate(); err != nil {
		return nil, err
	}
	return x, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Validate checks the index's structure: spans in order inside the blob and
// the stream, windows of the right size, spans within the caps.
func (x *Index) Validate() error {
	switch x.Kind {
	case KindGzip, KindRaw:
	default:
		return bad("unknown kind %d", uint8(x.Kind))
	}
	if x.BlobSize <= 0 || x.BlobSize > MaxBlobSize {
		return bad("blob size %d", x.BlobSize)
	}
	if x.Kind == KindRaw && x.Size != x.BlobSize {
		return bad("raw blob of %d bytes with a stream of %d", x.BlobSize, x.Size)
	}
	if x.Size < 0 || x.Size > x.BlobSize*MaxRatio {
		return bad("stream of %d bytes from a blob of %d", x.Size, x.BlobSize)
	}
	if len(x.Spans) == 0 || len(x.Spans) > MaxSpans {
		return bad("%d spans", len(x.Spans))
	}
	for i, s := range x.Spans {
		if i == 0 && (s.InBit != 0 || s.Out != 0 || s.WindowLen() != 0) {
			return bad("span 0 starts at bit %d, output %d, with a %d-byte window: want the blob's start", s.InBit, s.Out, s.WindowLen())
		}
		if i > 0 {
			p := x.Spans[i-1]
			if s.InBit <= p.InBit || s.Out <= p.Out {
				return bad("span %d (bit %d, output %d) does not follow span %d (bit %d, output %d)", i, s.InBit, s.Out, i-1, p.InBit, p.Out)
			}
		}
		// The last span may be empty: a checkpoint before a final empty block.
		outEnd := x.Size
		if i > 0 && i == len(x.Spans)-1 {
			outEnd++
		}
		if s.InBit >= x.BlobSize*8 || s.Out >= max(outEnd, 1) {
			return bad("span %d at bit %d, output %d: outside the blob (%d bytes) or stream (%d bytes)", i, s.InBit, s.Out, x.BlobSize, x.Size)
		}
		switch x.Kind {
		case KindRaw:
			if s.InBit != 8*s.Out || s.WindowLen() != 0 {
				return bad("raw span %d at bit %d, output %d, window %d", i, s.InBit, s.Out, s.WindowLen())
			}
		case KindGzip:
			if want := min(s.Out, WindowSize); i > 0 && int64(s.WindowLen()) != want {
				return bad("span %d at output %d has a %d-byte window, want %d", i, s.Out, s.WindowLen(), want)
			}
		}
		start, end := x.stored(i)
		if out := x.spanEnd(i) - s.Out; out > MaxSpanBytes {
			return bad("span %d holds %d bytes, over %d", i, out, MaxSpanBytes)
		}
		if end-start > MaxSpanStoredBytes {
			return bad("span %d stores %d bytes, over %d", i, end-start, MaxSpanStoredBytes)
		}
	}
	return nil
}

// span returns the index of the span holding uncompressed offset off.
func (x *Index) span(off int64) int {
	lo, hi := 0, len(x.Spans)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if x.Spans[m].Out <= off {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo - 1
}
