package lsmt

import (
	"bytes"
	"fmt"
	"io"
)

// importChunk is how much of a raw image Import reads at a time; a multiple of ImportZeroBlock.
const importChunk = 1 << 20

// ImportZeroBlock is the granularity at which Import leaves all-zero data unwritten.
const ImportZeroBlock = 4096

// Import copies the raw disk image read from src into the layer at byte off, a multiple of
// SectorSize. All-zero ImportZeroBlock blocks are not written, so they stay holes: they read as
// zeros, or as the layer below in a stack. The tail of the image is padded with zeros to a
// whole sector. It returns the bytes stored, and fails without writing past the virtual size.
func (w *Writable) Import(src io.Reader, off int64) (stored int64, err error) {
	if off%SectorSize != 0 {
		return 0, fmt.Errorf("offset %d is not a multiple of %d", off, SectorSize)
	}
	buf := make([]byte, importChunk)
	for {
		n, err := io.ReadFull(src, buf)
		if n > 0 {
			padded := (n + SectorSize - 1) / SectorSize * SectorSize
			clear(buf[n:padded])
			if off+int64(padded) > w.VirtualSize() {
				return stored, fmt.Errorf("image does not fit: byte %d is past the layer's virtual size %d", off+int64(padded), w.VirtualSize())
			}
			s, werr := w.writeNonZero(buf[:padded], off)
			stored += s
			if werr != nil {
				return stored, werr
			}
			off += int64(padded)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return stored, nil
		}
		if err != nil {
			return stored, err
		}
	}
}

// writeNonZero writes the runs of p that are not all-zero ImportZeroBlock blocks.
func (w *Writable) writeNonZero(p []byte, off int64) (int64, error) {
	var stored int64
	start := -1 // start of the current non-zero run
	flush := func(end int) error {
		if start < 0 {
			return nil
		}
		_, err := w.WriteAt(p[start:end], off+int64(start))
		stored += int64(end - start)
		start = -1
		return err
	}
	for i := 0; i < len(p); i += ImportZeroBlock {
		end := min(i+ImportZeroBlock, len(p))
		if isZeroBlock(p[i:end]) {
			if err := flush(i); err != nil {
				return stored, err
			}
		} else if start < 0 {
			start = i
		}
	}
	return stored, flush(len(p))
}

var zeroBlock [ImportZeroBlock]byte

// isZeroBlock reports whether p, at most ImportZeroBlock bytes, is all zeros.
func isZeroBlock(p []byte) bool { return bytes.Equal(p, zeroBlock[:len(p)]) }
