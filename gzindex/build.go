package gzindex

import (
	"cmp"
	"errors"
	"fmt"
	"io"

	"github.com/obdproject/obd/rangetable"
)

// BuildOptions configures Build.
type BuildOptions struct {
	Kind Kind // KindGzip, KindRaw or KindZstd
	// Spacing is the uncompressed distance between checkpoints (at the next
	// deflate block boundary after it); 0 means DefaultSpacing. At least
	// MinSpacing and at most MaxSpanBytes/2.
	Spacing int64
	// Chunk is the chunk size of the blob's range table (0: DefaultChunk): a
	// power of two in [rangetable.MinChunk, rangetable.MaxChunk].
	Chunk int64
}

// Build reads a whole blob once, writes its uncompressed stream to stream
// (which may be nil) and returns its index. A gzip blob's member checksums
// are verified.
func Build(blob io.Reader, opts BuildOptions, stream io.Writer) (*Index, error) {
	spacing := opts.Spacing
	if spacing == 0 {
		spacing = DefaultSpacing
	}
	if spacing < MinSpacing || spacing > MaxSpanBytes/2 {
		return nil, fmt.Errorf("gzindex: spacing %d outside [%d, %d]", spacing, MinSpacing, MaxSpanBytes/2)
	}
	table, err := rangetable.NewBuilder(cmp.Or(opts.Chunk, DefaultChunk))
	if err != nil {
		return nil, fmt.Errorf("gzindex: %w", err)
	}
	if stream == nil {
		stream = io.Discard
	}
	// Every blob byte read passes through the table, which counts them.
	tee := io.TeeReader(blob, table)
	var x *Index
	switch opts.Kind {
	case KindGzip:
		x, err = buildGzip(tee, table.Len, spacing, stream)
	case KindRaw:
		x, err = buildRaw(tee, spacing, stream)
	case KindZstd:
		x, err = buildZstd(tee, spacing, stream)
	default:
		return nil, fmt.Errorf("gzindex: build: unknown kind %d", uint8(opts.Kind))
	}
	if err != nil {
		return nil, err
	}
	x.table = table.Table()
	x.BlobSize = table.Len()
	if x.Table, err = rangetable.Parse(x.table); err != nil {
		return nil, fmt.Errorf("gzindex: build: %w", err)
	}
	if err := x.Validate(); err != nil {
		if errors.Is(err, ErrBadIndex) && x.Kind == KindGzip {
			return nil, fmt.Errorf("gzindex: build: deflate blocks too long for checkpoints: %w", err)
		}
		return nil, fmt.Errorf("gzindex: build: %w", err)
	}
	return x, nil
}

func buildRaw(blob io.Reader, spacing int64, stream io.Writer) (*Index, error) {
	x := &Index{Kind: KindRaw}
	buf := make([]byte, 1<<20)
	var off int64
	for {
		n, err := io.ReadFull(blob, buf[:min(int64(len(buf)), spacing-off%spacing)])
		if n > 0 {
			if off%spacing == 0 {
				x.Spans = append(x.Spans, Span{InBit: off * 8, Out: off})
			}
			if _, werr := stream.Write(buf[:n]); werr != nil {
				return nil, fmt.Errorf("gzindex: write stream: %w", werr)
			}
			off += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("gzindex: read blob at %d: %w", off, err)
		}
	}
	x.Size = off
	return x, nil
}

// sparseWindow keeps of a checkpoint's window only the bytes the decoding
// after it refers to: the rest is zeroed, so the window compresses to little.
// Only the first WindowSize bytes of output after the checkpoint can reach
// back into the window.
type sparseWindow struct {
	span *Span
	used []bool // of span.Window
}

// ref marks the window bytes a back-reference to [from, to) copies.
func (w *sparseWindow) ref(from, to int64) {
	if w.span == nil {
		return
	}
	base := w.span.Out - int64(len(w.span.Window))
	for p := max(from, base); p < min(to, w.span.Out); p++ {
		w.used[p-base] = true
	}
}

// finish zeroes the window's unused bytes and stops tracking.
func (w *sparseWindow) finish() {
	if w.span == nil {
		return
	}
	for i, u := range w.used {
		if !u {
			w.span.Window[i] = 0
		}
	}
	w.span = nil
}

// buildGzip indexes a gzip blob; read is how many bytes of it were read.
func buildGzip(blob io.Reader, read func() int64, spacing int64, stream io.Writer) (*Index, error) {
	x := &Index{Kind: KindGzip, Spans: []Span{{}}}
	var f inflater
	var failed error
	var sparse sparseWindow
	f.refs = sparse.ref
	f.boundary = func(bit, out int64, window []byte) bool {
		if sparse.span != nil && out >= sparse.span.Out+WindowSize {
			sparse.finish()
		}
		if out-x.Spans[len(x.Spans)-1].Out < spacing {
			return false
		}
		if len(x.Spans) == MaxSpans {
			failed = fmt.Errorf("gzindex: build: more than %d spans; raise the spacing", MaxSpans)
			return true
		}
		sparse.finish()
		x.Spans = append(x.Spans, Span{InBit: bit, Out: out, Window: append([]byte(nil), window...)})
		sparse.span = &x.Spans[len(x.Spans)-1]
		sparse.used = append(sparse.used[:0], make([]bool, len(window))...)
		return false
	}
	if err := f.resetAt(blob, 0, 0, nil); err != nil {
		return nil, err
	}
	n, err := io.Copy(stream, &f)
	if failed != nil {
		return nil, failed
	}
	if err != nil {
		return nil, fmt.Errorf("gzindex: build: at output %d: %w", n, err)
	}
	// The decoder stopped at the end of the last member; nothing may follow.
	if _, err := io.Copy(io.Discard, blob); err != nil {
		return nil, fmt.Errorf("gzindex: read blob: %w", err)
	}
	if n := read(); n != f.br.base+f.br.consumed {
		return nil, fmt.Errorf("%w: %d bytes after the last gzip member", errCorrupt, n-(f.br.base+f.br.consumed))
	}
	sparse.finish()
	x.Size = f.out
	return x, nil
}
