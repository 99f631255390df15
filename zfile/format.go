package zfile

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// Layout constants of docs/FORMAT.md.
const (
	structSize   = 512    // header and trailer on disk
	infoSize     = 96     // the meaningful part of them, recorded in the structure itself
	crcSize      = 4      // a block's CRC, when verify is set
	blockCRCSeed = 100007 // upstream's seed for block CRCs
	maxBlocks    = 1e9    // upstream's cap on index_size
	maxBlockSize = 1 << 20
	minBlockSize = 512
)

// Structure flags (docs/FORMAT.md); each bit is tested on its own.
const (
	flagHeader            = 1 << 0
	flagData              = 1 << 1
	flagSealed            = 1 << 2
	flagHeaderOverwritten = 1 << 3
	flagDigest            = 1 << 4
	flagIndexCompressed   = 1 << 5
)

var (
	magic0     = []byte("ZFile\x00\x01\x00")
	magic1     = []byte("tuji.yyf@Alibaba")
	castagnoli = crc32.MakeTable(crc32.Castagnoli)
)

// crc is upstream's CRC32C: no initial or final inversion, so the seed is the raw register.
func crc(seed uint32, p []byte) uint32 {
	return ^crc32.Update(^seed, castagnoli, p)
}

// structure is the 96-byte record that a ZFile's header and trailer both hold.
type structure struct {
	flags        uint64
	indexOffset  uint64
	indexSize    uint64
	originalSize uint64
	indexCRC     uint32
	blockSize    uint32
	algo         Algorithm
	level        uint8
	useDict      uint8
	dictSize     uint32
	verify       bool
}

func (s *structure) has(flag uint64) bool { return s.flags&flag != 0 }

// marshal encodes s into its 512-byte on-disk form, with the digest when flagDigest is set.
func (s *structure) marshal() []byte {
	b := make([]byte, structSize)
	le := binary.LittleEndian
	copy(b[0:8], magic0)
	copy(b[8:24], magic1)
	le.PutUint32(b[24:], infoSize)
	le.PutUint64(b[32:], s.flags)
	le.PutUint64(b[40:], s.indexOffset)
	le.PutUint64(b[48:], s.indexSize)
	le.PutUint64(b[56:], s.originalSize)
	le.PutUint32(b[64:], s.indexCRC)
	le.PutUint32(b[72:], s.blockSize)
	b[76] = uint8(s.algo)
	b[77] = s.level
	b[78] = s.useDict
	le.PutUint32(b[84:], s.dictSize)
	if s.verify {
		b[88] = 1
	}
	if s.has(flagDigest) {
		le.PutUint32(b[28:], crc(0, b))
	}
	return b
}

// hasMagic reports whether b starts with the ZFile magic.
func hasMagic(b []byte) bool {
	return len(b) >= 24 && string(b[0:8]) == string(magic0) && string(b[8:24]) == string(magic1)
}

// parseStructure decodes a header or trailer, checking its magic, size and (when flagged)
// digest. What the fields must satisfy depends on the role and is checked by the caller.
func parseStructure(b []byte) (structure, error) {
	le := binary.LittleEndian
	if len(b) != structSize || !hasMagic(b) {
		return structure{}, fmt.Errorf("no ZFile magic")
	}
	if n := le.Uint32(b[24:]); n != infoSize {
		return structure{}, fmt.Errorf("structure size %d, want %d", n, infoSize)
	}
	s := structure{
		flags:        le.Uint64(b[32:]),
		indexOffset:  le.Uint64(b[40:]),
		indexSize:    le.Uint64(b[48:]),
		originalSize: le.Uint64(b[56:]),
		indexCRC:     le.Uint32(b[64:]),
		blockSize:    le.Uint32(b[72:]),
		algo:         Algorithm(b[76]),
		level:        b[77],
		useDict:      b[78],
		dictSize:     le.Uint32(b[84:]),
		verify:       b[88] != 0,
	}
	if s.has(flagDigest) {
		var zeroed [structSize]byte
		copy(zeroed[:], b)
		le.PutUint32(zeroed[28:], 0)
		if stored, got := le.Uint32(b[28:]), crc(0, zeroed[:]); got != stored {
			return structure{}, fmt.Errorf("digest %#08x, computed %#08x", stored, got)
		}
	}
	return s, nil
}
