package zfile

import (
	"bytes"
	"encoding/binary"
	"errors"
	"runtime"
	"strings"
	"testing"
)

// claimedTable is a ZFile of size bytes whose header holds s (and so the final info); every
// other byte reads as zero.
type claimedTable struct {
	size   int64
	header []byte
}

func (c *claimedTable) ReadAt(p []byte, off int64) (int, error) {
	clear(p)
	if off < structSize {
		copy(p, c.header[off:])
	}
	return len(p), nil
}

// TestOpenReadsJumpTableInPieces: a ZFile whose size allows a jump table of 10^9 entries,
// and which claims one, but whose first entry is already invalid, is refused after reading
// a bounded piece of the table, without allocating room for all of it first.
func TestOpenReadsJumpTableInPieces(t *testing.T) {
	const blocks = 1e9
	size := int64(structSize + 4*blocks + structSize)
	s := structure{flags: flagHeader | flagHeaderOverwritten, indexOffset: structSize, indexSize: blocks,
		originalSize: blocks * minBlockSize, blockSize: minBlockSize, algo: LZ4}
	r := &claimedTable{size: size, header: s.marshal()}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := Open(r, size)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "block 0:") {
		t.Fatalf("Open: %v, want ErrFormat about block 0", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 16<<20 {
		t.Errorf("Open allocated %d MiB for a jump table it never read, want at most 16 MiB", got>>20)
	}
}

// TestOpenBoundsRatio: a well-formed ZFile of 1000 one-byte blocks that claims 1 MiB of
// original bytes for each (1 GiB from 6 KB) is refused, as everything above it would size
// its reads and indexes by the original size; WithMaxRatio can allow it.
func TestOpenBoundsRatio(t *testing.T) {
	const blocks = 1000
	var z bytes.Buffer
	s := structure{flags: flagHeader | flagHeaderOverwritten, indexOffset: structSize + blocks, indexSize: blocks,
		originalSize: blocks << 20, blockSize: 1 << 20, algo: ZSTD}
	z.Write(s.marshal())
	z.Write(make([]byte, blocks))
	for range blocks {
		z.Write(binary.LittleEndian.AppendUint32(nil, 1))
	}
	z.Write(make([]byte, structSize))
	_, err := Open(bytes.NewReader(z.Bytes()), int64(z.Len()))
	if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "ratio") {
		t.Fatalf("Open: %v, want ErrFormat about the ratio", err)
	}
	if _, err := Open(bytes.NewReader(z.Bytes()), int64(z.Len()), WithMaxRatio(1<<20)); err != nil {
		t.Fatalf("Open with a larger ratio: %v", err)
	}
}
