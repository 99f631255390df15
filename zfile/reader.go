package zfile

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"runtime"
	"sync"
)

const (
	// checkpointEvery is the spacing, in blocks, of the stored cumulative offsets: a block's
	// start is its checkpoint plus fewer than this many lengths.
	checkpointEvery = 64
	// maxFetch bounds the original bytes one internal fetch covers, so a huge ReadAt does
	// not stage its whole compressed range in memory at once.
	maxFetch = 16 << 20
	// parallelGrain is the original bytes a decode goroutine takes at a time (8 blocks of
	// 4 KiB); a fetch of fewer than two grains is decoded by the calling goroutine alone,
	// as goroutine handoff would cost more than it saves.
	parallelGrain = 32 << 10
)

// Info describes an open ZFile.
type Info struct {
	Algorithm     Algorithm
	Level         int // the level byte as stored (upstream writes 0)
	BlockSize     int
	Blocks        int
	OriginalSize  int64
	StoredSize    int64 // the ZFile's own size
	HeaderFlags   uint64
	TrailerFlags  uint64 // 0 when the header carries the info and no trailer was needed
	Verify        bool   // blocks carry CRCs
	HeaderHasInfo bool   // header flag bit 3: the header holds the final info
}

// Reader reads the original bytes of a ZFile. It is safe for concurrent use.
type Reader struct {
	r           io.ReaderAt
	name        string
	info        Info
	blockSize   int64
	dataStart   int64    // file offset of block 0
	lengths     []uint32 // stored length of each block, CRC included
	checkpoints []int64  // file offset of block k*checkpointEvery
	concurrency int      // decode goroutines per fetch; 0 means GOMAXPROCS
	maxRatio    int64    // most original bytes per stored byte
}

// DefaultMaxRatio bounds a ZFile's original size against its stored size unless
// WithMaxRatio says otherwise. Everything above a ZFile sizes its reads and indexes by the
// original size, which the file only claims; real layers stay far below this (a whole
// layer of 64 KiB zstd blocks of one repeated byte comes to about 2300), while the format
// alone would allow 1 MiB per 5 stored bytes.
const DefaultMaxRatio = 4096

// tablePiece is how many jump table entries are read at a time (1 MiB).
const tablePiece = 1 << 18

// OpenOption configures Open.
type OpenOption func(*Reader)

// WithName sets the name errors use for the ZFile, e.g. a blob digest or a path.
func WithName(name string) OpenOption { return func(r *Reader) { r.name = name } }

// WithConcurrency sets how many goroutines decode the blocks of one large ReadAt; n <= 0
// means runtime.GOMAXPROCS(0) at the time of the read (the default).
func WithConcurrency(n int) OpenOption { return func(r *Reader) { r.concurrency = n } }

// WithMaxRatio sets the most original bytes a ZFile may claim per stored byte (its whole
// size, header and jump table included); n <= 0 means DefaultMaxRatio.
func WithMaxRatio(n int64) OpenOption { return func(r *Reader) { r.maxRatio = n } }

// HasMagic reports whether r holds the ZFile magic at offset 0.
func HasMagic(r io.ReaderAt) bool {
	b := make([]byte, len(magic0)+len(magic1))
	n, _ := r.ReadAt(b, 0)
	return n == len(b) && hasMagic(b)
}

// Open validates the ZFile of the given size held by r (header, trailer, jump table) and
// returns a Reader of its original bytes. It reads only the header, trailer and jump table.
// Invalid input gives an error wrapping ErrFormat.
func Open(r io.ReaderAt, size int64, opts ...OpenOption) (*Reader, error) {
	zr := &Reader{r: r}
	for _, o := range opts {
		o(zr)
	}
	if zr.maxRatio <= 0 {
		zr.maxRatio = DefaultMaxRatio
	}
	if size < 2*structSize {
		return nil, zr.formatErr("file of %d bytes is shorter than header and trailer", size)
	}
	buf := make([]byte, structSize)
	if err := readFull(r, buf, 0); err != nil {
		return nil, fmt.Errorf("%s: read header: %w", prefix(zr.name), err)
	}
	header, err := parseStructure(buf)
	if err != nil {
		return nil, zr.formatErr("header: %v", err)
	}
	if !header.has(flagHeader) {
		return nil, zr.formatErr("header flags %#x lack the header bit", header.flags)
	}
	zr.info.HeaderFlags = header.flags
	zr.info.HeaderHasInfo = header.has(flagHeaderOverwritten)
	meta := header
	if !zr.info.HeaderHasInfo {
		if err := readFull(r, buf, size-structSize); err != nil {
			return nil, fmt.Errorf("%s: read trailer: %w", prefix(zr.name), err)
		}
		trailer, err := parseStructure(buf)
		if err != nil {
			return nil, zr.formatErr("trailer at offset %d: %v", size-structSize, err)
		}
		if trailer.has(flagHeader) || !trailer.has(flagData) || !trailer.has(flagSealed) {
			return nil, zr.formatErr("trailer flags %#x: want trailer, data and sealed bits", trailer.flags)
		}
		zr.info.TrailerFlags = trailer.flags
		meta = trailer
	}
	if err := zr.setup(meta, size); err != nil {
		return nil, err
	}
	if err := zr.loadJumpTable(meta, size); err != nil {
		return nil, err
	}
	return zr, nil
}

// setup checks the structure's fields against each other and the file size, and records them.
func (zr *Reader) setup(m structure, size int64) error {
	switch {
	case m.has(flagIndexCompressed):
		return zr.formatErr("compressed jump tables are not supported (flags %#x)", m.flags)
	case m.useDict != 0 || m.dictSize != 0:
		return zr.formatErr("compression dictionaries are not supported (dict_size %d)", m.dictSize)
	case m.algo != LZ4 && m.algo != ZSTD:
		return zr.formatErr("unknown algorithm %d", m.algo)
	case m.blockSize < minBlockSize || m.blockSize > maxBlockSize || m.blockSize&(m.blockSize-1) != 0:
		return zr.formatErr("block size %d is not a power of two in [%d, %d]", m.blockSize, minBlockSize, maxBlockSize)
	case m.indexSize > maxBlocks:
		return zr.formatErr("jump table of %d entries exceeds %d", m.indexSize, int64(maxBlocks))
	case m.originalSize > m.indexSize*uint64(m.blockSize) || m.indexSize != (m.originalSize+uint64(m.blockSize)-1)/uint64(m.blockSize):
		return zr.formatErr("%d blocks of %d bytes cannot hold original size %d", m.indexSize, m.blockSize, m.originalSize)
	}
	if m.originalSize/uint64(size) > uint64(zr.maxRatio) {
		return zr.formatErr("original size %d is more than %d times the stored size %d (ratio bound)",
			m.originalSize, zr.maxRatio, size)
	}
	tableEnd := uint64(size - structSize)
	if m.indexOffset < structSize || m.indexOffset > tableEnd || m.indexSize*4 > tableEnd-m.indexOffset {
		return zr.formatErr("jump table of %d entries at offset %d does not fit between header and trailer (file size %d)",
			m.indexSize, m.indexOffset, size)
	}
	zr.blockSize = int64(m.blockSize)
	zr.dataStart = structSize
	zr.info.Algorithm = m.algo
	zr.info.Level = int(m.level)
	zr.info.BlockSize = int(m.blockSize)
	zr.info.Blocks = int(m.indexSize)
	zr.info.OriginalSize = int64(m.originalSize)
	zr.info.StoredSize = size
	zr.info.Verify = m.verify
	return nil
}

// loadJumpTable reads and checks the jump table and builds the checkpoints.
func (zr *Reader) loadJumpTable(m structure, size int64) error {
	// The table is read in pieces, so a claimed size costs memory only as its entries
	// arrive and prove valid.
	minLen, maxLen := uint32(1), uint32(maxStoredLen(zr.info.BlockSize))
	if zr.info.Verify {
		minLen, maxLen = crcSize+1, maxLen+crcSize
	}
	n := int(m.indexSize)
	zr.lengths = make([]uint32, 0, min(n, tablePiece))
	zr.checkpoints = make([]int64, 0, (min(n, tablePiece)+checkpointEvery-1)/checkpointEvery)
	table := make([]byte, 4*min(n, tablePiece))
	var tableCRC uint32
	off := zr.dataStart
	for first := 0; first < n; first += tablePiece {
		piece := table[:4*min(n-first, tablePiece)]
		at := int64(m.indexOffset) + 4*int64(first)
		if err := readFull(zr.r, piece, at); err != nil {
			return fmt.Errorf("%s: read jump table at offset %d: %w", prefix(zr.name), at, err)
		}
		tableCRC = crc(tableCRC, piece)
		for j := 0; j < len(piece); j += 4 {
			i := first + j/4
			l := binary.LittleEndian.Uint32(piece[j:])
			if l < minLen || l > maxLen {
				return zr.formatErr("block %d: stored length %d outside [%d, %d]", i, l, minLen, maxLen)
			}
			if i%checkpointEvery == 0 {
				zr.checkpoints = append(zr.checkpoints, off)
			}
			zr.lengths = append(zr.lengths, l)
			off += int64(l)
		}
	}
	if m.has(flagDigest) && tableCRC != m.indexCRC {
		return zr.formatErr("jump table CRC %#08x, computed %#08x", m.indexCRC, tableCRC)
	}
	if off != int64(m.indexOffset) {
		return zr.formatErr("blocks end at offset %d but the jump table starts at %d", off, m.indexOffset)
	}
	return nil
}

func (zr *Reader) formatErr(format string, args ...any) error {
	return fmt.Errorf("%s: %w: %s", prefix(zr.name), ErrFormat, fmt.Sprintf(format, args...))
}

// Size returns the original (uncompressed) size.
func (zr *Reader) Size() int64 { return zr.info.OriginalSize }

// Info describes the ZFile.
func (zr *Reader) Info() Info { return zr.info }

// blockStart returns the file offset of block i.
func (zr *Reader) blockStart(i int) int64 {
	k := i / checkpointEvery
	off := zr.checkpoints[k]
	for _, l := range zr.lengths[k*checkpointEvery : i] {
		off += int64(l)
	}
	return off
}

// blockLen returns the original length of block i (the last block may be short).
func (zr *Reader) blockLen(i int) int64 {
	return min(zr.blockSize, zr.info.OriginalSize-int64(i)*zr.blockSize)
}

// ReadAt reads original bytes with io.ReaderAt semantics: it returns io.EOF when fewer than
// len(p) bytes remain. Every block's CRC is checked before its bytes are returned; a bad
// block gives a *BlockError. The compressed bytes of a read are fetched with one ReadAt on
// the underlying reader (per 16 MiB of original data) and decoded in parallel.
func (zr *Reader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%s: negative offset %d", prefix(zr.name), off)
	}
	if off >= zr.info.OriginalSize {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	want := len(p)
	if rest := zr.info.OriginalSize - off; int64(len(p)) > rest {
		p = p[:rest]
	}
	for done := 0; done < len(p); {
		n := min(len(p)-done, maxFetch)
		if err := zr.readSpan(p[done:done+n], off+int64(done)); err != nil {
			return done, err
		}
		done += n
	}
	if len(p) < want {
		return len(p), io.EOF
	}
	return len(p), nil
}

// span is one fetch: blocks first to first+n-1, whose stored bytes buf starts at file offset
// base, decoded into p, which receives the original bytes from offset off on.
type span struct {
	p        []byte
	off      int64
	first, n int
	buf      []byte
	base     int64
}

// readSpan fills p (non-empty, inside the file) from original offset off.
func (zr *Reader) readSpan(p []byte, off int64) error {
	s := span{p: p, off: off, first: int(off / zr.blockSize)}
	s.n = int((off+int64(len(p))-1)/zr.blockSize) - s.first + 1
	stored := 0
	for _, l := range zr.lengths[s.first : s.first+s.n] {
		stored += int(l)
	}
	s.base = zr.blockStart(s.first)
	bufp := fetchBuffers.get(stored)
	defer fetchBuffers.put(bufp)
	s.buf = *bufp
	fetch := func() error {
		if err := readFull(zr.r, s.buf, s.base); err != nil {
			return fmt.Errorf("%s: read blocks %d-%d (%d bytes at offset %d): %w",
				prefix(zr.name), s.first, s.first+s.n-1, stored, s.base, err)
		}
		return nil
	}
	workers := zr.concurrency
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	grain := max(1, parallelGrain/int(zr.blockSize))
	if workers = min(workers, s.n/grain); workers < 2 {
		if err := fetch(); err != nil {
			return err
		}
		return zr.decodeBlocks(&s, 0, s.n, 0)
	}
	return zr.decodeParallel(s, workers, grain, fetch)
}

// decodeBlocks decodes blocks first+from to first+to-1 of s; at is the offset in s.buf of
// the first of them.
func (zr *Reader) decodeBlocks(s *span, from, to, at int) error {
	for k := from; k < to; k++ {
		l := int(zr.lengths[s.first+k])
		if err := zr.decodeInto(s.p, s.off, s.first+k, s.buf[at:at+l], s.base+int64(at)); err != nil {
			return err
		}
		at += l
	}
	return nil
}

// decodeParallel fetches and decodes s on several goroutines, a grain of blocks at a time.
// The helper goroutines start before the fetch, so that their wake-up overlaps it.
func (zr *Reader) decodeParallel(s span, workers, grain int, fetch func() error) error {
	grainAt := make([]int, (s.n+grain-1)/grain) // offset in s.buf of each grain
	at := 0
	for k := range s.n {
		if k%grain == 0 {
			grainAt[k/grain] = at
		}
		at += int(zr.lengths[s.first+k])
	}
	return forEach(workers, len(grainAt), fetch, func(_, g int) error {
		return zr.decodeBlocks(&s, g*grain, min((g+1)*grain, s.n), grainAt[g])
	})
}

// decodeInto checks and decodes block i (stored bytes src at file offset fileOff) and copies
// the part of it that overlaps [off, off+len(p)) into p.
func (zr *Reader) decodeInto(p []byte, off int64, i int, src []byte, fileOff int64) error {
	rawStart, rawLen := int64(i)*zr.blockSize, zr.blockLen(i)
	lo, hi := max(rawStart, off), min(rawStart+rawLen, off+int64(len(p)))
	if lo == rawStart && hi == rawStart+rawLen {
		return zr.decodeBlock(p[lo-off:hi-off], i, src, fileOff)
	}
	scratchp := blockBuffers.get(int(rawLen))
	defer blockBuffers.put(scratchp)
	if err := zr.decodeBlock(*scratchp, i, src, fileOff); err != nil {
		return err
	}
	copy(p[lo-off:hi-off], (*scratchp)[lo-rawStart:hi-rawStart])
	return nil
}

// decodeBlock verifies the CRC of block i (when the file has CRCs) and decodes it into dst,
// which is exactly the block's original length.
func (zr *Reader) decodeBlock(dst []byte, i int, src []byte, fileOff int64) error {
	if zr.info.Verify {
		data, sum := src[:len(src)-crcSize], binary.LittleEndian.Uint32(src[len(src)-crcSize:])
		if got := crc(blockCRCSeed, data); got != sum {
			return &BlockError{Name: zr.name, Block: i, Offset: fileOff,
				Err: fmt.Errorf("%w: stored %#08x, computed %#08x", ErrChecksum, sum, got)}
		}
		src = data
	}
	if err := zr.info.Algorithm.decompress(dst, src); err != nil {
		return &BlockError{Name: zr.name, Block: i, Offset: fileOff, Err: err}
	}
	return nil
}

// Verify reads, CRC-checks and decodes every block, stopping at the first bad one or when
// ctx is done.
func (zr *Reader) Verify(ctx context.Context) error {
	chunk := max(zr.blockSize, 4<<20/zr.blockSize*zr.blockSize)
	bufp := fetchBuffers.get(int(min(chunk, zr.info.OriginalSize)))
	defer fetchBuffers.put(bufp)
	for off := int64(0); off < zr.info.OriginalSize; off += chunk {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%s: verify stopped at offset %d: %w", prefix(zr.name), off, err)
		}
		n := min(chunk, zr.info.OriginalSize-off)
		if err := zr.readSpan((*bufp)[:n], off); err != nil {
			return err
		}
	}
	return nil
}

// bufferPool pools byte slices of similar sizes; a pooled slice too small for a request is
// dropped for a new one.
type bufferPool struct{ p sync.Pool }

var (
	fetchBuffers bufferPool // compressed ranges of reads
	blockBuffers bufferPool // single blocks that a read covers only in part
)

func (bp *bufferPool) get(n int) *[]byte {
	if b, ok := bp.p.Get().(*[]byte); ok && cap(*b) >= n {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n)
	return &b
}

func (bp *bufferPool) put(b *[]byte) { bp.p.Put(b) }

// readFull fills p from r at off. io.ReaderAt returns an error with any short read; an
// io.EOF that comes with a full buffer is success, a short read becomes ErrUnexpectedEOF.
func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	switch {
	case n == len(p):
		return nil
	case err == nil || err == io.EOF:
		return io.ErrUnexpectedEOF
	}
	return err
}
