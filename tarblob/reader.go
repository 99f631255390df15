package tarblob

import (
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Limits that keep a hostile header chain from costing memory or time.
const (
	maxExtensionData = 1 << 20 // bytes of one PAX or GNU long-name record block
	maxHeaders       = 64      // header blocks before the end of the archive
)

// extension holds what PAX and GNU long-name headers say about the entry that follows.
type extension struct {
	name    string
	size    int64
	hasSize bool
}

// Open returns the payload of the overlaybd.commit member of the tar blob r of the given
// size. It reads only header blocks (and PAX/GNU extension data), so r may be a remote blob.
// The tar must hold exactly that one regular member; PAX and GNU extension headers are
// allowed, and the end-of-archive blocks may be missing. Anything else is an error wrapping
// ErrNotLayerTar.
func Open(r io.ReaderAt, size int64) (*io.SectionReader, error) {
	var (
		member *io.SectionReader
		ext    extension
		off    int64
	)
	hdr := make([]byte, blockSize)
	for headers := 0; ; headers++ {
		if headers == maxHeaders {
			return nil, notLayer(off, "more than %d headers", maxHeaders)
		}
		if off == size && member != nil && ext == (extension{}) {
			return member, nil // archive ends without end-of-archive blocks
		}
		if size-off < blockSize {
			return nil, notLayer(off, "truncated tar: header needs %d bytes, blob has %d", blockSize, size-off)
		}
		if err := readFull(r, hdr, off); err != nil {
			return nil, fmt.Errorf("tarblob: header at offset %d: %w", off, err)
		}
		if isZeroBlock(hdr) {
			switch {
			case member == nil:
				return nil, notLayer(off, "no %s member", MemberName)
			case ext != (extension{}):
				return nil, notLayer(off, "extension header without an entry")
			}
			return member, nil
		}
		if member != nil {
			return nil, notLayer(off, "more than one member")
		}
		if !checksumOK(hdr) {
			return nil, notLayer(off, "header checksum mismatch")
		}
		bodySize, err := parseNumeric(hdr[sizeOff : sizeOff+sizeLen])
		if err != nil {
			return nil, notLayer(off, "size field: %v", err)
		}
		dataOff := off + blockSize
		typeflag := hdr[typeflagOff]
		switch typeflag {
		case typePAX, typePAXGlobal, typeGNULong, typeGNULink:
			data, err := readExtension(r, dataOff, bodySize, size)
			if err != nil {
				return nil, notLayer(off, "%v", err)
			}
			if err := ext.apply(typeflag, data); err != nil {
				return nil, notLayer(off, "%v", err)
			}
		case typeRegular, typeRegularOld:
			name := headerName(hdr)
			if ext.name != "" {
				name = ext.name
			}
			if ext.hasSize {
				bodySize = ext.size
			}
			if strings.TrimPrefix(name, "./") != MemberName {
				return nil, notLayer(off, "member %q, want %q", name, MemberName)
			}
			if bodySize > size-dataOff {
				return nil, notLayer(off, "member of %d bytes at offset %d runs past the blob's end (%d)", bodySize, dataOff, size)
			}
			member = io.NewSectionReader(r, dataOff, bodySize)
			ext = extension{}
		default:
			return nil, notLayer(off, "entry %q of type %q, want one regular file", headerName(hdr), typeflag)
		}
		off = dataOff + (bodySize+blockSize-1)/blockSize*blockSize
	}
}

// apply records what an extension header of the given type says about the next entry.
func (e *extension) apply(typeflag byte, data []byte) error {
	switch typeflag {
	case typePAX, typePAXGlobal:
		recs, err := paxRecords(data)
		if err != nil {
			return err
		}
		for k := range recs {
			if strings.HasPrefix(k, "GNU.sparse.") {
				return fmt.Errorf("PAX record %q: sparse members are not layer payloads", k)
			}
		}
		if typeflag == typePAXGlobal {
			return nil // global defaults name no entry and cannot change a size
		}
		if p, ok := recs["path"]; ok {
			e.name = p
		}
		if s, ok := recs["size"]; ok {
			v, err := strconv.ParseInt(s, 10, 64)
			if err != nil || v < 0 {
				return fmt.Errorf("PAX size %q invalid", s)
			}
			e.size, e.hasSize = v, true
		}
	case typeGNULong:
		e.name = cString(data)
	}
	return nil
}

// readExtension reads the data of an extension header, bounded by maxExtensionData.
func readExtension(r io.ReaderAt, off, n, blobSize int64) ([]byte, error) {
	if n > maxExtensionData {
		return nil, fmt.Errorf("extension header of %d bytes exceeds %d", n, maxExtensionData)
	}
	if n > blobSize-off {
		return nil, fmt.Errorf("extension header of %d bytes at offset %d runs past the blob's end", n, off)
	}
	data := make([]byte, n)
	if err := readFull(r, data, off); err != nil {
		return nil, fmt.Errorf("extension data at offset %d: %w", off, err)
	}
	return data, nil
}

// readFull fills p from r at off; a short read is io.ErrUnexpectedEOF.
func readFull(r io.ReaderAt, p []byte, off int64) error {
	_, err := io.ReadFull(io.NewSectionReader(r, off, int64(len(p))), p)
	return err
}

func notLayer(off int64, format string, args ...any) error {
	return fmt.Errorf("tarblob: header at offset %d: %s: %w", off, fmt.Sprintf(format, args...), ErrNotLayerTar)
}
