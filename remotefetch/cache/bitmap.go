package cache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
)

// The .bitmap file: a 32-byte header then one bit per fill unit (bit i%8 of byte i/8).
//
//	0  8  magic "OBDCBMP1"
//	8  8  fill unit (bytes)
//	16 8  blob size (bytes)
//	24 8  flags (flagVerified: the complete blob matched its digest)
const (
	bitmapMagic      = "OBDCBMP1"
	bitmapHeaderSize = 32
	flagVerified     = 1
)

// ErrBadBitmap reports a .bitmap file that is not one this package wrote for this blob.
var ErrBadBitmap = errors.New("cache: bad bitmap file")

// bitmap is a fixed-size set of unit indexes.
type bitmap []uint64

func newBitmap(n int) bitmap { return make(bitmap, (n+63)/64) }

func (b bitmap) has(i int) bool { return b[i/64]&(1<<(uint(i)%64)) != 0 }
func (b bitmap) set(i int)      { b[i/64] |= 1 << (uint(i) % 64) }

func (b bitmap) count() int {
	n := 0
	for _, w := range b {
		n += bits.OnesCount64(w)
	}
	return n
}

func (b bitmap) clone() bitmap { return append(bitmap(nil), b...) }

// encode renders the whole .bitmap file for a blob of n units.
func (b bitmap) encode(unit, size int64, flags uint64, n int) []byte {
	out := make([]byte, bitmapHeaderSize+(n+7)/8)
	copy(out, bitmapMagic)
	binary.LittleEndian.PutUint64(out[8:], uint64(unit))
	binary.LittleEndian.PutUint64(out[16:], uint64(size))
	binary.LittleEndian.PutUint64(out[24:], flags)
	for i := range n {
		if b.has(i) {
			out[bitmapHeaderSize+i/8] |= 1 << (uint(i) % 8)
		}
	}
	return out
}

// decodeBitmap parses a .bitmap file. It checks the header against the blob's expected unit
// and size, so a file written with other settings is refused rather than misread.
func decodeBitmap(raw []byte, unit, size int64) (bitmap, uint64, error) {
	if len(raw) < bitmapHeaderSize || string(raw[:8]) != bitmapMagic {
		return nil, 0, fmt.Errorf("%w: no header", ErrBadBitmap)
	}
	gotUnit := int64(binary.LittleEndian.Uint64(raw[8:]))
	gotSize := int64(binary.LittleEndian.Uint64(raw[16:]))
	if gotUnit != unit || gotSize != size {
		return nil, 0, fmt.Errorf("%w: unit %d size %d, want unit %d size %d", ErrBadBitmap, gotUnit, gotSize, unit, size)
	}
	flags := binary.LittleEndian.Uint64(raw[24:])
	n := unitCount(size, unit)
	if len(raw) != bitmapHeaderSize+(n+7)/8 {
		return nil, 0, fmt.Errorf("%w: %d bytes, want %d", ErrBadBitmap, len(raw), bitmapHeaderSize+(n+7)/8)
	}
	if n%8 != 0 && raw[len(raw)-1]>>(n%8) != 0 {
		return nil, 0, fmt.Errorf("%w: bits set past unit %d", ErrBadBitmap, n)
	}
	b := newBitmap(n)
	for i := range n {
		if raw[bitmapHeaderSize+i/8]&(1<<(uint(i)%8)) != 0 {
			b.set(i)
		}
	}
	return b, flags, nil
}

// peekBitmapHeader returns the unit and size recorded in a .bitmap file.
func peekBitmapHeader(raw []byte) (unit, size int64, err error) {
	if len(raw) < bitmapHeaderSize || string(raw[:8]) != bitmapMagic {
		return 0, 0, fmt.Errorf("%w: no header", ErrBadBitmap)
	}
	unit = int64(binary.LittleEndian.Uint64(raw[8:]))
	size = int64(binary.LittleEndian.Uint64(raw[16:]))
	if unit <= 0 || size < 0 || unit > 1<<30 || size > 1<<50 {
		return 0, 0, fmt.Errorf("%w: unit %d size %d", ErrBadBitmap, unit, size)
	}
	return unit, size, nil
}

func unitCount(size, unit int64) int { return int((size + unit - 1) / unit) }
