package zfile

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"

	"github.com/klauspost/compress/zstd"
)

const (
	// DefaultBlockSize is the block size when Options.BlockSize is 0.
	DefaultBlockSize = 4096
	// DefaultZstdLevel is the zstd level when Options.Level is 0, as upstream uses.
	DefaultZstdLevel = 3
	// upstreamMaxStored is the largest stored block (CRC excluded) upstream can stage.
	upstreamMaxStored = 64 << 10
	// batchBytes is the original data the Writer collects before compressing it in parallel
	// (at least a block per goroutine).
	batchBytes = 1 << 20
	// maxConcurrency caps Options.Concurrency, and with it the batch's memory.
	maxConcurrency = 256
)

// Options configures a Writer. The zero value means LZ4 with 4 KiB blocks.
type Options struct {
	Algorithm   Algorithm // LZ4 when 0
	Level       int       // zstd level 1-22, DefaultZstdLevel when 0; ignored for LZ4
	BlockSize   int       // 4096 (when 0), 8192, 16384, 32768 or 65536
	Concurrency int       // compressor goroutines; runtime.GOMAXPROCS(0) when <= 0, at most 256
}

// WriterStats summarises what a Writer wrote.
type WriterStats struct {
	RawBytes    int // original bytes written
	StoredBytes int // bytes of the ZFile, header and trailer included
	Blocks      int
	// Expanded64K counts blocks whose stored length (CRC excluded) exceeds 64 KiB, which
	// upstream overlaybd cannot read; only incompressible 64 KiB blocks can do that.
	Expanded64K int
}

// Writer compresses a stream into a ZFile. Output is deterministic: the same input and
// options give the same bytes whatever the concurrency. Close must be called.
type Writer struct {
	w      io.Writer
	at     io.WriterAt // when set, Close rewrites the header at base with the final info
	base   int64
	meta   structure // the fields header and trailer share
	bs     int
	comps  []compressor
	zenc   *zstd.Encoder
	batch  []byte   // original bytes waiting to be compressed
	blocks [][]byte // compressed blocks of the batch, CRC appended
	out    []byte   // the batch's blocks, concatenated for one Write
	table  []byte   // the jump table so far
	stats  WriterStats
	err    error // sticky: the first failure
	closed bool
}

// NewWriter starts a ZFile on w and writes its header (flags 0x13, as overlaybd-zfile
// does). If w is also an io.WriterAt, Close rewrites that header with the final info (flags
// 0x1B, as overlaybd-commit -z does), at the offset where the header started when w is
// also an io.Seeker (a non-seekable w such as a pipe keeps the 0x13 header), else at 0.
func NewWriter(w io.Writer, opts Options) (*Writer, error) {
	m := structure{flags: flagHeader | flagData | flagDigest, verify: true}
	switch opts.Algorithm {
	case 0, LZ4:
		m.algo = LZ4
	case ZSTD:
		m.algo = ZSTD
		if opts.Level == 0 {
			opts.Level = DefaultZstdLevel
		}
		if opts.Level < 1 || opts.Level > 22 {
			return nil, fmt.Errorf("zfile: zstd level %d outside 1-22", opts.Level)
		}
		m.level = uint8(opts.Level)
	default:
		return nil, fmt.Errorf("zfile: unknown algorithm %d", opts.Algorithm)
	}
	switch opts.BlockSize {
	case 0:
		opts.BlockSize = DefaultBlockSize
	case 4096, 8192, 16384, 32768, 65536:
	default:
		return nil, fmt.Errorf("zfile: block size %d: want 4096, 8192, 16384, 32768 or 65536", opts.BlockSize)
	}
	m.blockSize = uint32(opts.BlockSize)
	if opts.Concurrency <= 0 {
		opts.Concurrency = runtime.GOMAXPROCS(0)
	}
	opts.Concurrency = min(opts.Concurrency, maxConcurrency)
	zw := &Writer{w: w, meta: m, bs: opts.BlockSize}
	if err := zw.newCompressors(opts); err != nil {
		return nil, err
	}
	if at, ok := w.(io.WriterAt); ok {
		zw.at = at
		if s, ok := w.(io.Seeker); ok {
			pos, err := s.Seek(0, io.SeekCurrent)
			if err != nil {
				zw.at = nil
			}
			zw.base = pos
		}
	}
	batchBlocks := max(batchBytes/opts.BlockSize, opts.Concurrency)
	zw.batch = make([]byte, 0, batchBlocks*opts.BlockSize)
	zw.blocks = make([][]byte, batchBlocks)
	if err := zw.emit(m.marshal()); err != nil {
		zw.release()
		return nil, err
	}
	return zw, nil
}

func (zw *Writer) newCompressors(opts Options) error {
	zw.comps = make([]compressor, opts.Concurrency)
	if zw.meta.algo == ZSTD {
		enc, err := newZstdEncoder(opts.Level, opts.Concurrency)
		if err != nil {
			return fmt.Errorf("zfile: zstd encoder: %w", err)
		}
		zw.zenc = enc
	}
	for i := range zw.comps {
		if zw.zenc != nil {
			zw.comps[i] = zstdCompressor{zw.zenc}
		} else {
			zw.comps[i] = &lz4Compressor{}
		}
	}
	return nil
}

// Write buffers p; every full batch of blocks is compressed in parallel and written in order.
func (zw *Writer) Write(p []byte) (int, error) {
	if zw.closed {
		return 0, errors.New("zfile: write after Close")
	}
	if zw.err != nil {
		return 0, zw.err
	}
	n := 0
	for len(p) > 0 {
		k := copy(zw.batch[len(zw.batch):cap(zw.batch)], p)
		zw.batch = zw.batch[:len(zw.batch)+k]
		p, n = p[k:], n+k
		if len(zw.batch) == cap(zw.batch) {
			if err := zw.flush(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// flush compresses the batch (its last block may be partial only at Close) and writes it.
func (zw *Writer) flush() error {
	nb := (len(zw.batch) + zw.bs - 1) / zw.bs
	err := forEach(len(zw.comps), nb, nil, func(w, k int) error {
		src := zw.batch[k*zw.bs : min((k+1)*zw.bs, len(zw.batch))]
		dst, err := zw.comps[w].compress(zw.blocks[k][:0], src)
		if err != nil {
			return fmt.Errorf("zfile: compress block %d: %w", zw.stats.Blocks+k, err)
		}
		zw.blocks[k] = binary.LittleEndian.AppendUint32(dst, crc(blockCRCSeed, dst))
		return nil
	})
	if err != nil {
		zw.err = err
		return err
	}
	zw.out = zw.out[:0]
	for _, b := range zw.blocks[:nb] {
		zw.out = append(zw.out, b...)
		zw.table = binary.LittleEndian.AppendUint32(zw.table, uint32(len(b)))
		if len(b)-crcSize > upstreamMaxStored {
			zw.stats.Expanded64K++
		}
	}
	zw.stats.Blocks += nb
	zw.stats.RawBytes += len(zw.batch)
	zw.batch = zw.batch[:0]
	return zw.emit(zw.out)
}

// emit writes b to the underlying writer, recording a failure as sticky.
func (zw *Writer) emit(b []byte) error {
	n, err := zw.w.Write(b)
	zw.stats.StoredBytes += n
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		zw.err = fmt.Errorf("zfile: write at offset %d: %w", zw.stats.StoredBytes, err)
	}
	return zw.err
}

// Close compresses the last (partial) block and writes the jump table and the trailer
// (flags 0x16), then, for an io.WriterAt, the final header. It does not close the
// underlying writer. A file with blocks that expanded past 64 KiB is still valid for obd,
// but Close logs a warning because upstream overlaybd cannot read it.
func (zw *Writer) Close() error {
	if zw.closed {
		return zw.err
	}
	zw.closed = true
	defer zw.release()
	if zw.err != nil {
		return zw.err
	}
	if len(zw.batch) > 0 {
		if err := zw.flush(); err != nil {
			return err
		}
	}
	final := zw.meta
	final.indexOffset = uint64(zw.stats.StoredBytes)
	final.indexSize = uint64(zw.stats.Blocks)
	final.originalSize = uint64(zw.stats.RawBytes)
	final.indexCRC = crc(0, zw.table)
	final.flags = flagData | flagSealed | flagDigest
	if zw.emit(zw.table) != nil || zw.emit(final.marshal()) != nil {
		return zw.err
	}
	if zw.at != nil {
		final.flags = flagHeader | flagData | flagHeaderOverwritten | flagDigest
		if _, err := zw.at.WriteAt(final.marshal(), zw.base); err != nil {
			zw.err = fmt.Errorf("zfile: rewrite header at offset %d: %w", zw.base, err)
			return zw.err
		}
	}
	if zw.stats.Expanded64K > 0 {
		slog.Warn("zfile: blocks expanded past 64 KiB; upstream overlaybd cannot read this file",
			"blocks", zw.stats.Expanded64K, "block_size", zw.bs)
	}
	return nil
}

// release frees the codec state.
func (zw *Writer) release() {
	if zw.zenc != nil {
		zw.zenc.Close()
		zw.zenc = nil
	}
}

// Stats reports what was written; the totals are final after Close.
func (zw *Writer) Stats() WriterStats { return zw.stats }
