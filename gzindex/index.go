// Package gzindex is a seek index for an OCI layer blob: it serves the
// uncompressed tar stream of a gzip, zstd (in frames) or uncompressed layer as
// an io.ReaderAt over the unchanged blob, fetching and decoding only what a
// read needs. zstd blobs are indexed at frame boundaries (zstd.go).
//
// It is a format box of the read path (docs/DESIGN.md): an index (Index, made
// by Build in one pass over the blob, encoded by Encode and decoded by Decode)
// holds zran-style checkpoints: the bit offset of a deflate block boundary in
// the blob, the uncompressed offset there and the 32 KiB window before it, so
// decoding can start at any checkpoint, and the blob's range table (package
// rangetable), so every range read of the blob is verified, chunk by chunk,
// before it is inflated. Open reads an index's head only (span records and
// table) and each window when a read first needs it. NewReader serves the
// uncompressed stream, decoding a span only as far as a read needs and going
// on from there for the next read (bounded), so neighbouring reads inflate a
// span once. The byte format is docs/FORMAT.md's "Seek index" section.
package gzindex

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/obdproject/obd/rangetable"
)

// Kind says how the blob is compressed.
type Kind uint8

const (
	// KindGzip is a gzip blob (one or more members).
	KindGzip Kind = 1
	// KindRaw is an uncompressed blob: the stream is the blob itself.
	KindRaw Kind = 2
	// KindZstd is a zstd blob (one or more frames); checkpoints are frame
	// boundaries and need no window.
	KindZstd Kind = 3
)

func (k Kind) String() string {
	switch k {
	case KindGzip:
		return "gzip"
	case KindRaw:
		return "raw"
	case KindZstd:
		return "zstd"
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
	// MaxZstdRatio is zstd's: an RLE block of 4 bytes holds 128 KiB.
	MaxZstdRatio   = 1 << 15
	DefaultSpacing = 256 << 10
	// DefaultChunk is the chunk of the blob's range table: what a read
	// fetches and checks at least.
	DefaultChunk   = 32 << 10
	headerSize     = 40
	spanRecordSize = 24
	magic          = "OBDGZIX2"
	MinSpacing     = 64 << 10
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
	// Window is the 32 KiB of output before Out (less at the stream's start);
	// empty for a raw blob and for the first span. A decoded or opened index
	// leaves it nil and reads the window, compressed, only when a read needs
	// it (Index.window).
	Window []byte

	windowLen int    // of a decoded span: the window's length
	packedLen int    // of a decoded span: the compressed window's length
	packedOff int64  // of a decoded span: where the compressed window is in the index
	packed    []byte // of a decoded (not opened) span: the window, raw deflate
}

// WindowLen is the length of the span's window.
func (s *Span) WindowLen() int {
	if s.Window == nil {
		return s.windowLen
	}
	return len(s.Window)
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
	// Table is the range table (package rangetable) of the blob: the SHA-256
	// of each chunk of it, against which a Reader checks every blob byte.
	Table *rangetable.Table

	table []byte      // Table's encoding
	src   io.ReaderAt // an opened index: where the windows are read from
	name  string      // an opened index: its name in errors
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

// HeadSize is the length of the part of an encoded index a reader needs
// before its first read: everything but the windows.
func (x *Index) HeadSize() int64 {
	return headerSize + spanRecordSize*int64(len(x.Spans)) + int64(len(x.table))
}

// Encode returns the index's bytes (docs/FORMAT.md, "Seek index"). It is
// for built and decoded indexes; an opened one has no windows in memory.
func (x *Index) Encode() []byte {
	packed := make([][]byte, len(x.Spans))
	n := x.HeadSize()
	for i := range x.Spans {
		packed[i] = x.Spans[i].packWindow()
		n += int64(len(packed[i]))
	}
	b := make([]byte, headerSize, n)
	copy(b, magic)
	b[8] = byte(x.Kind)
	binary.LittleEndian.PutUint64(b[16:], uint64(x.BlobSize))
	binary.LittleEndian.PutUint64(b[24:], uint64(x.Size))
	binary.LittleEndian.PutUint32(b[32:], uint32(len(x.Spans)))
	binary.LittleEndian.PutUint32(b[36:], uint32(len(x.table)))
	var rec [spanRecordSize]byte
	for i, s := range x.Spans {
		binary.LittleEndian.PutUint64(rec[0:], uint64(s.InBit))
		binary.LittleEndian.PutUint64(rec[8:], uint64(s.Out))
		binary.LittleEndian.PutUint32(rec[16:], uint32(s.WindowLen()))
		binary.LittleEndian.PutUint32(rec[20:], uint32(len(packed[i])))
		b = append(b, rec[:]...)
	}
	b = append(b, x.table...)
	for _, p := range packed {
		b = append(b, p...)
	}
	return b
}

// Decode parses and validates a whole encoded index held in memory; windows
// alias b.
func Decode(b []byte) (*Index, error) {
	x, err := Open(bytes.NewReader(b), int64(len(b)), "index")
	if err != nil {
		return nil, err
	}
	for i := range x.Spans {
		s := &x.Spans[i]
		if s.packedLen > 0 {
			s.packed = b[s.packedOff : s.packedOff+int64(s.packedLen) : s.packedOff+int64(s.packedLen)]
		}
	}
	x.src = nil
	return x, nil
}

// Open parses and validates the encoded index of size bytes in r, reading
// its head (HeadSize bytes) now and each window only when a read needs it.
// Every field is checked against the others (see Validate). r is trusted to
// return the index's own bytes (a caller reading it from a registry checks
// them, e.g. against a range table); name names it in errors.
func Open(r io.ReaderAt, size int64, name string) (*Index, error) {
	var h [headerSize]byte
	if size < headerSize {
		return nil, bad("%s: %d bytes, shorter than the header", name, size)
	}
	if _, err := r.ReadAt(h[:], 0); err != nil {
		return nil, fmt.Errorf("gzindex: %s: read header: %w", name, err)
	}
	if !bytes.Equal(h[:8], []byte(magic)) {
		return nil, bad("%s: no %q header", name, magic)
	}
	if !allZero(h[9:16]) {
		return nil, bad("%s: reserved header bytes are not zero", name)
	}
	x := &Index{Kind: Kind(h[8]), name: name}
	blob, stream := binary.LittleEndian.Uint64(h[16:]), binary.LittleEndian.Uint64(h[24:])
	n, tlen := binary.LittleEndian.Uint32(h[32:]), binary.LittleEndian.Uint32(h[36:])
	if blob > MaxBlobSize || stream > MaxBlobSize*MaxZstdRatio {
		return nil, bad("%s: blob of %d bytes or stream of %d bytes over the limit", name, blob, stream)
	}
	x.BlobSize, x.Size = int64(blob), int64(stream)
	if n == 0 || n > MaxSpans {
		return nil, bad("%s: %d spans (1 to %d allowed)", name, n, MaxSpans)
	}
	head := headerSize + int64(n)*spanRecordSize + int64(tlen)
	if size < head {
		return nil, bad("%s: %d spans and a %d-byte table need %d bytes, index has %d", name, n, tlen, head, size)
	}
	b := make([]byte, head-headerSize)
	if _, err := r.ReadAt(b, headerSize); err != nil {
		return nil, fmt.Errorf("gzindex: %s: read span records: %w", name, err)
	}
	x.table = b[int64(n)*spanRecordSize:]
	t, err := rangetable.Parse(x.table)
	if err != nil {
		return nil, bad("%s: blob's range table: %v", name, err)
	}
	if t.Covered() != x.BlobSize {
		return nil, bad("%s: range table covers %d bytes of a %d-byte blob", name, t.Covered(), x.BlobSize)
	}
	x.Table = t
	x.Spans = make([]Span, n)
	off := head
	for i := range x.Spans {
		r := b[i*spanRecordSize:]
		s := &x.Spans[i]
		in, out := binary.LittleEndian.Uint64(r[0:]), binary.LittleEndian.Uint64(r[8:])
		if in > MaxBlobSize*8 || out > MaxBlobSize*MaxZstdRatio {
			return nil, bad("%s: span %d: offsets %d/%d out of range", name, i, in, out)
		}
		s.InBit, s.Out = int64(in), int64(out)
		w, packed := binary.LittleEndian.Uint32(r[16:]), binary.LittleEndian.Uint32(r[20:])
		if w > WindowSize || (w == 0) != (packed == 0) || packed > maxPackedWindow || int64(packed) > size-off {
			return nil, bad("%s: span %d: window of %d bytes in %d: too long, or past the index's end", name, i, w, packed)
		}
		s.windowLen, s.packedLen, s.packedOff = int(w), int(packed), off
		off += int64(packed)
	}
	if off != size {
		return nil, bad("%s: %d bytes after the last window", name, size-off)
	}
	if err := x.Validate(); err != nil {
		return nil, err
	}
	x.src = r
	return x, nil
}

// window returns span i's window, reading and inflating it for a decoded or
// opened index.
func (x *Index) window(i int) ([]byte, error) {
	s := &x.Spans[i]
	if s.Window != nil || s.windowLen == 0 {
		return s.Window, nil
	}
	packed := s.packed
	if packed == nil {
		packed = make([]byte, s.packedLen)
		if _, err := x.src.ReadAt(packed, s.packedOff); err != nil {
			return nil, fmt.Errorf("gzindex: %s: read window of span %d: %w", x.name, i, err)
		}
	}
	w := make([]byte, s.windowLen)
	r := flate.NewReader(bytes.NewReader(packed))
	if _, err := io.ReadFull(r, w); err != nil {
		return nil, bad("window of span %d, %d bytes: %v", i, s.windowLen, err)
	}
	if n, err := r.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		return nil, bad("window of span %d longer than %d bytes", i, s.windowLen)
	}
	return w, nil
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
// the stream, windows of the right size, spans within the caps, a range
// table of the whole blob.
func (x *Index) Validate() error {
	switch x.Kind {
	case KindGzip, KindRaw, KindZstd:
	default:
		return bad("unknown kind %d", uint8(x.Kind))
	}
	if x.BlobSize <= 0 || x.BlobSize > MaxBlobSize {
		return bad("blob size %d", x.BlobSize)
	}
	if x.Table == nil || x.Table.Covered() != x.BlobSize {
		return bad("no range table of the %d-byte blob", x.BlobSize)
	}
	if x.Kind == KindRaw && x.Size != x.BlobSize {
		return bad("raw blob of %d bytes with a stream of %d", x.BlobSize, x.Size)
	}
	ratio := int64(MaxRatio)
	if x.Kind == KindZstd {
		ratio = MaxZstdRatio
	}
	if x.Size < 0 || x.Size > x.BlobSize*ratio {
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
		case KindZstd:
			if s.InBit%8 != 0 || s.WindowLen() != 0 {
				return bad("zstd span %d at bit %d with a %d-byte window: want a frame boundary, no window", i, s.InBit, s.WindowLen())
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

// WindowRanges returns where in the encoded index the windows are that reads
// of the blob byte ranges (offset, length) would need: those of the spans
// whose blob bytes the ranges touch, as (offset, length) ranges of the index,
// neighbours merged. A replay of a start's blob reads warms them with it.
func (x *Index) WindowRanges(blob [][2]int64) [][2]int64 {
	var out [][2]int64
	seen := map[int]bool{}
	for _, r := range blob {
		if r[1] <= 0 {
			continue
		}
		// Spans are ordered by blob offset: the first whose bytes reach r.
		i := sort.Search(len(x.Spans), func(i int) bool { _, end := x.stored(i); return end > r[0] })
		for ; i < len(x.Spans) && x.Spans[i].InBit/8 < r[0]+r[1]; i++ {
			if s := &x.Spans[i]; s.packedLen > 0 && !seen[i] {
				seen[i] = true
				out = append(out, [2]int64{s.packedOff, int64(s.packedLen)})
			}
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a][0] < out[b][0] })
	merged := out[:0]
	for _, r := range out {
		if n := len(merged); n > 0 && merged[n-1][0]+merged[n-1][1] == r[0] {
			merged[n-1][1] += r[1]
			continue
		}
		merged = append(merged, r)
	}
	return merged
}
