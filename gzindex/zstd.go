package gzindex

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
)

// A zstd blob (RFC 8878) is indexed at frame boundaries: each frame decodes on
// its own, so checkpoints need no window. A span is one or more whole frames;
// a blob whose frames are too large for a span (a layer compressed as one
// frame, as most zstd tools write it) cannot be indexed.

const (
	zstdMagic          = 0xFD2FB528
	zstdSkippableMask  = 0xFFFFFFF0
	zstdSkippableMagic = 0x184D2A50
)

// errZstd marks bytes that are not a valid sequence of zstd frames.
var errZstd = errors.New("gzindex: not a valid zstd stream")

// zstdDecoderOptions bound a decoder's memory: no frame of an index holds
// more than a span.
func zstdDecoderOptions() []zstd.DOption {
	return []zstd.DOption{zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxMemory(MaxSpanBytes), zstd.WithDecoderMaxWindow(MaxSpanBytes)}
}

// readZstdFrame appends the next frame of r (whole: header, blocks,
// checksum) to buf. It returns io.EOF at the end of r before a frame, and
// skippable=true for a skippable frame, which decodes to nothing.
func readZstdFrame(r io.Reader, buf []byte) (frame []byte, skippable bool, err error) {
	read := func(n int) error {
		if int64(len(buf))+int64(n) > MaxSpanStoredBytes {
			return fmt.Errorf("%w: a frame of more than %d bytes", errZstd, MaxSpanStoredBytes)
		}
		at := len(buf)
		buf = append(buf, make([]byte, n)...)
		if _, err := io.ReadFull(r, buf[at:]); err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return fmt.Errorf("%w: frame cut short", errZstd)
			}
			return err
		}
		return nil
	}
	var magic [4]byte
	if n, err := io.ReadFull(r, magic[:]); n == 0 && err == io.EOF {
		return nil, false, io.EOF
	} else if err != nil {
		return nil, false, fmt.Errorf("%w: frame magic cut short", errZstd)
	}
	buf = append(buf, magic[:]...)
	m := binary.LittleEndian.Uint32(magic[:])
	if m&zstdSkippableMask == zstdSkippableMagic {
		if err := read(4); err != nil {
			return nil, false, err
		}
		size := binary.LittleEndian.Uint32(buf[len(buf)-4:])
		if err := read(int(size)); err != nil {
			return nil, false, err
		}
		return buf, true, nil
	}
	if m != zstdMagic {
		return nil, false, fmt.Errorf("%w: frame magic %#x", errZstd, m)
	}
	if err := read(1); err != nil {
		return nil, false, err
	}
	fhd := buf[len(buf)-1]
	if fhd&0x08 != 0 {
		return nil, false, fmt.Errorf("%w: reserved frame header bit set", errZstd)
	}
	single := fhd&0x20 != 0
	header := [4]int{0, 1, 2, 4}[fhd&3] // dictionary ID
	switch fhd >> 6 {
	case 0:
		if single {
			header++
		}
	case 1:
		header += 2
	case 2:
		header += 4
	case 3:
		header += 8
	}
	if !single {
		header++ // window descriptor
	}
	if err := read(header); err != nil {
		return nil, false, err
	}
	for last := false; !last; {
		if err := read(3); err != nil {
			return nil, false, err
		}
		h := uint32(buf[len(buf)-3]) | uint32(buf[len(buf)-2])<<8 | uint32(buf[len(buf)-1])<<16
		last = h&1 != 0
		size := int(h >> 3)
		switch (h >> 1) & 3 {
		case 1: // RLE: one byte repeated size times
			size = 1
		case 3:
			return nil, false, fmt.Errorf("%w: reserved block type", errZstd)
		}
		if err := read(size); err != nil {
			return nil, false, err
		}
	}
	if fhd&0x04 != 0 { // content checksum
		if err := read(4); err != nil {
			return nil, false, err
		}
	}
	return buf, false, nil
}

// buildZstd indexes a zstd blob: a checkpoint at the first frame boundary at
// least spacing stream bytes after the previous one. Every frame is decoded
// (its checksum, if it has one, checked).
func buildZstd(blob io.Reader, spacing int64, stream io.Writer) (*Index, error) {
	x := &Index{Kind: KindZstd, Spans: []Span{{}}}
	dec, err := zstd.NewReader(nil, zstdDecoderOptions()...)
	if err != nil {
		return nil, fmt.Errorf("gzindex: zstd: %w", err)
	}
	defer dec.Close()
	var in, out int64
	var frame, data []byte
	for {
		var skippable bool
		frame, skippable, err = readZstdFrame(blob, frame[:0])
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("gzindex: build: at blob byte %d: %w", in, err)
		}
		if out-x.Spans[len(x.Spans)-1].Out >= spacing {
			if len(x.Spans) == MaxSpans {
				return nil, fmt.Errorf("gzindex: build: more than %d spans; raise the spacing", MaxSpans)
			}
			x.Spans = append(x.Spans, Span{InBit: 8 * in, Out: out})
		}
		in += int64(len(frame))
		if skippable {
			continue
		}
		if data, err = dec.DecodeAll(frame, data[:0]); err != nil {
			return nil, fmt.Errorf("gzindex: build: zstd frame at blob byte %d: %w (frames of at most %d bytes of output can be indexed)",
				in-int64(len(frame)), err, MaxSpanBytes)
		}
		if _, err := stream.Write(data); err != nil {
			return nil, fmt.Errorf("gzindex: write stream: %w", err)
		}
		out += int64(len(data))
	}
	x.Size = out
	return x, nil
}

// advanceZstd is advance for a zstd blob: the span's frames are decoded by a
// streaming decoder that waits between reads.
func (r *Reader) advanceZstd(c *cursor, need int64) error {
	x := r.x
	i := c.i
	spanLen := x.spanEnd(i) - x.Spans[i].Out
	if c.z == nil {
		if len(c.data) > 0 {
			return nil // done
		}
		src, err := r.newSource(i, need)
		if err != nil {
			return err
		}
		if c.z, err = zstd.NewReader(src, zstdDecoderOptions()...); err != nil {
			return fmt.Errorf("gzindex: %s: span %d: zstd: %w", r.opts.Name, i, err)
		}
		c.src = src
	} else {
		c.src.expect(x, i, need)
	}
	from, target := c.grow(need, spanLen)
	k, err := io.ReadFull(c.z, c.data[from:target])
	c.data = c.data[:from+k]
	if ferr := c.src.fetchErr; ferr != nil {
		return ferr
	}
	if err != nil {
		return fmt.Errorf("%w: %s: span %d: zstd: %v", ErrMismatch, r.opts.Name, i, err)
	}
	if target < spanLen {
		return nil
	}
	var one [1]byte
	if n, err := c.z.Read(one[:]); n != 0 || err != io.EOF {
		return fmt.Errorf("%w: %s: span %d decodes past output %d (%v)", ErrMismatch, r.opts.Name, i, x.spanEnd(i), err)
	}
	c.z.Close()
	c.z, c.src = nil, nil
	return nil
}
