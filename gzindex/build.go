package gzindex

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
)

// BuildOptions configures Build.
type BuildOptions struct {
	Kind Kind // KindGzip or KindRaw
	// Spacing is the uncompressed distance between checkpoints (at the next
	// deflate block boundary after it); 0 means DefaultSpacing. At least
	// MinSpacing and at most MaxSpanBytes/2.
	Spacing int64
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
	if stream == nil {
		stream = io.Discard
	}
	switch opts.Kind {
	case KindGzip:
		return buildGzip(blob, spacing, stream)
	case KindRaw:
		return buildRaw(blob, spacing, stream)
	}
	return nil, fmt.Errorf("gzindex: build: unknown kind %d", uint8(opts.Kind))
}

func buildRaw(blob io.Reader, spacing int64, stream io.Writer) (*Index, error) {
	x := &Index{Kind: KindRaw}
	buf := make([]byte, 1<<20)
	h := sha256.New()
	var off int64
	for {
		want := spacing - off%spacing
		n, err := io.ReadFull(blob, buf[:min(int64(len(buf)), want)])
		if n > 0 {
			if off%spacing == 0 {
				x.Spans = append(x.Spans, Span{InBit: off * 8, Out: off})
			}
			h.Write(buf[:n])
			if _, werr := stream.Write(buf[:n]); werr != nil {
				return nil, fmt.Errorf("gzindex: write stream: %w", werr)
			}
			off += int64(n)
			if off%spacing == 0 {
				h.Sum(x.Spans[len(x.Spans)-1].Digest[:0])
				h.Reset()
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("gzindex: read blob at %d: %w", off, err)
		}
	}
	if off%spacing != 0 {
		h.Sum(x.Spans[len(x.Spans)-1].Digest[:0])
	}
	x.BlobSize, x.Size = off, off
	if err := x.Validate(); err != nil {
		return nil, fmt.Errorf("gzindex: build: %w", err)
	}
	return x, nil
}

// hashTee keeps the blob bytes read but not yet hashed, so each span's
// digest can take exactly its bytes although the decoder reads ahead.
type hashTee struct {
	r       io.Reader
	pending []byte
	base    int64 // blob offset of pending[0]
	read    int64 // blob bytes read in all
	h       hash.Hash
	fed     int64 // blob offset up to which h has its bytes
}

func (t *hashTee) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	t.pending = append(t.pending, p[:n]...)
	t.read += int64(n)
	return n, err
}

// feed hashes the pending bytes up to blob offset end into the current span.
func (t *hashTee) feed(end int64) {
	if end > t.fed {
		t.h.Write(t.pending[t.fed-t.base : end-t.base])
		t.fed = end
	}
}

// drop forgets pending bytes before blob offset off (already fed).
func (t *hashTee) drop(off int64) {
	if off > t.base {
		n := copy(t.pending, t.pending[off-t.base:])
		t.pending = t.pending[:n]
		t.base = off
	}
}

func buildGzip(blob io.Reader, spacing int64, stream io.Writer) (*Index, error) {
	x := &Index{Kind: KindGzip, Spans: []Span{{}}}
	tee := &hashTee{r: blob, h: sha256.New()}
	var f inflater
	var failed error
	f.boundary = func(bit, out int64, window []byte) bool {
		if out-x.Spans[len(x.Spans)-1].Out < spacing {
			// Keep the pending bytes small: what lies before the decoder's
			// position belongs to the current span only.
			if pos := bit / 8; pos-tee.base > 8<<20 {
				tee.feed(pos)
				tee.drop(pos)
			}
			return false
		}
		if len(x.Spans) == MaxSpans {
			failed = fmt.Errorf("gzindex: build: more than %d spans; raise the spacing", MaxSpans)
			return true
		}
		tee.feed((bit + 7) / 8)
		tee.h.Sum(x.Spans[len(x.Spans)-1].Digest[:0])
		tee.h.Reset()
		tee.fed = bit / 8
		tee.drop(bit / 8)
		x.Spans = append(x.Spans, Span{InBit: bit, Out: out, Window: append([]byte(nil), window...)})
		return false
	}
	if err := f.resetAt(tee, 0, 0, nil); err != nil {
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
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return nil, fmt.Errorf("gzindex: read blob: %w", err)
	}
	if tee.read != f.br.base+f.br.consumed {
		return nil, fmt.Errorf("%w: %d bytes after the last gzip member", errCorrupt, tee.read-(f.br.base+f.br.consumed))
	}
	tee.feed(tee.read)
	tee.h.Sum(x.Spans[len(x.Spans)-1].Digest[:0])
	x.BlobSize, x.Size = tee.read, f.out
	if err := x.Validate(); err != nil {
		if errors.Is(err, ErrBadIndex) && len(x.Spans) > 0 {
			return nil, fmt.Errorf("gzindex: build: deflate blocks too long for checkpoints: %w", err)
		}
		return nil, fmt.Errorf("gzindex: build: %w", err)
	}
	return x, nil
}
