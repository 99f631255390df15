package zfile

import (
	"fmt"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

// maxStoredLen bounds a block's stored length (CRC excluded): the worst-case expansion of
// LZ4 (n + n/255 + 16) and zstd (n + n/256 + up to 64 bytes) with margin. Longer entries
// in a jump table are corrupt, and the bound keeps hostile tables from costing memory.
func maxStoredLen(blockSize int) int { return blockSize + blockSize/128 + 1024 }

// zstdDecoders pools single-goroutine zstd decoders; a nil-input zstd.Decoder starts no
// goroutines, so pooled instances need no Close.
var zstdDecoders sync.Pool

func getZstdDecoder() (*zstd.Decoder, error) {
	if d, ok := zstdDecoders.Get().(*zstd.Decoder); ok {
		return d, nil
	}
	return zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(1),
		// Never decode past the destination's capacity: a hostile frame cannot allocate.
		zstd.WithDecodeAllCapLimit(true),
		zstd.WithDecoderMaxMemory(maxBlockSize))
}

// decompress decodes the compressed block src into dst, which must come out exactly full.
func (a Algorithm) decompress(dst, src []byte) error {
	switch a {
	case LZ4:
		n, err := lz4.UncompressBlock(src, dst)
		if err != nil {
			return fmt.Errorf("%w: lz4: %v", ErrFormat, err)
		}
		if n != len(dst) {
			return fmt.Errorf("%w: lz4 block decompressed to %d bytes, want %d", ErrFormat, n, len(dst))
		}
		return nil
	case ZSTD:
		d, err := getZstdDecoder()
		if err != nil {
			return fmt.Errorf("zstd decoder: %w", err)
		}
		defer zstdDecoders.Put(d)
		// The full slice expression keeps the decoder from writing past dst into the
		// neighbouring block of a caller's buffer.
		out, err := d.DecodeAll(src, dst[:0:len(dst)])
		if err != nil {
			return fmt.Errorf("%w: zstd: %v", ErrFormat, err)
		}
		if len(out) != len(dst) {
			return fmt.Errorf("%w: zstd block decompressed to %d bytes, want %d", ErrFormat, len(out), len(dst))
		}
		if len(out) > 0 && &out[0] != &dst[0] {
			copy(dst, out)
		}
		return nil
	}
	return fmt.Errorf("%w: unknown algorithm %d", ErrFormat, a)
}

// compressor compresses blocks for one Writer goroutine.
type compressor interface {
	// compress appends the compressed form of the non-empty block src to dst.
	compress(dst, src []byte) ([]byte, error)
}

// lz4Compressor produces the same bytes as liblz4's LZ4_compress_default, which upstream
// overlaybd uses, so obd's LZ4 ZFiles match upstream's byte for byte.
type lz4Compressor struct{ c lz4.CompressorCCompat }

func (c *lz4Compressor) compress(dst, src []byte) ([]byte, error) {
	bound := lz4.CompressBlockBound(len(src))
	start := len(dst)
	if cap(dst)-start < bound {
		dst = append(dst[:cap(dst)], make([]byte, bound-(cap(dst)-start))...)
	}
	// With room for the bound, LZ4 always emits a block, expanded if incompressible: the
	// format has no "stored" fallback.
	n, err := c.c.CompressBlock(src, dst[start:start+bound])
	if err != nil {
		return nil, fmt.Errorf("lz4: %w", err)
	}
	return dst[:start+n], nil
}

// zstdCompressor writes one single-segment zstd frame with content size and no checksum
// per block. The encoder is shared: EncodeAll is safe for concurrent use.
type zstdCompressor struct{ e *zstd.Encoder }

func (c zstdCompressor) compress(dst, src []byte) ([]byte, error) {
	return c.e.EncodeAll(src, dst), nil
}

func newZstdEncoder(level, concurrency int) (*zstd.Encoder, error) {
	return zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(level)),
		zstd.WithEncoderConcurrency(concurrency),
		zstd.WithEncoderCRC(false),
		zstd.WithSingleSegment(true))
}
