// Package ociindex is the format of an indexed OCI image: an ordinary image
// (gzip or uncompressed layers, unchanged) plus, beside it in the registry, an
// artifact that lets obd serve it lazily. For each layer the artifact holds a
// seek index (gzindex), a metadata layer (an overlaybd layer blob holding the
// ext4 blocks of that layer that are not file data) and a map (this package)
// sending the ext4 blocks that are file data to the file contents inside the
// layer's uncompressed tar stream.
//
// It is a format box beside layerblob: Open composes a layer's three parts
// and its original blob into the lsmt layers a stack takes. The byte formats
// are docs/FORMAT.md's "Indexed OCI images" section.
package ociindex

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/obdproject/obd/gzindex"
	"github.com/obdproject/obd/layerblob"
	"github.com/obdproject/obd/lsmt"
)

// Map limits.
const (
	mapMagic      = "OBDTMAP1"
	mapHeaderSize = 32
	// MaxMapRecords caps a map: 64 MiB of records, a few million files.
	MaxMapRecords = 1 << 22
)

// ErrBadMap reports a map blob that is not valid.
var ErrBadMap = errors.New("ociindex: bad map")

// Map sends ext4 blocks of a virtual disk to sectors of a tar stream.
type Map struct {
	StreamSize  int64 // bytes of the uncompressed tar stream
	VirtualSize int64 // bytes of the virtual disk
	// Segments: sorted, non-overlapping; MOffset counts sectors of the tar
	// stream; zeroed segments are the tails of files' last blocks.
	Segments []lsmt.Segment
}

// EncodeMap returns m's bytes.
func EncodeMap(m Map) []byte {
	b := make([]byte, mapHeaderSize+lsmt.RecordSize*len(m.Segments))
	copy(b, mapMagic)
	binary.LittleEndian.PutUint64(b[8:], uint64(m.StreamSize))
	binary.LittleEndian.PutUint64(b[16:], uint64(m.VirtualSize))
	binary.LittleEndian.PutUint32(b[24:], uint32(len(m.Segments)))
	for i, s := range m.Segments {
		lsmt.EncodeSegment(s, b[mapHeaderSize+i*lsmt.RecordSize:])
	}
	return b
}

// DecodeMap parses a map blob and checks it: header, record count, and every
// record as lsmt.NewMapped checks them.
func DecodeMap(b []byte) (Map, error) {
	if len(b) < mapHeaderSize || !bytes.Equal(b[:8], []byte(mapMagic)) {
		return Map{}, fmt.Errorf("%w: no %q header", ErrBadMap, mapMagic)
	}
	stream, vsize := binary.LittleEndian.Uint64(b[8:]), binary.LittleEndian.Uint64(b[16:])
	n := binary.LittleEndian.Uint32(b[24:])
	switch {
	case binary.LittleEndian.Uint32(b[28:]) != 0:
		return Map{}, fmt.Errorf("%w: reserved header bytes are not zero", ErrBadMap)
	case stream > 1<<54 || vsize > 1<<54:
		return Map{}, fmt.Errorf("%w: stream of %d bytes, disk of %d", ErrBadMap, stream, vsize)
	case n > MaxMapRecords:
		return Map{}, fmt.Errorf("%w: %d records, cap %d", ErrBadMap, n, MaxMapRecords)
	case len(b) != mapHeaderSize+int(n)*lsmt.RecordSize:
		return Map{}, fmt.Errorf("%w: %d records in %d bytes", ErrBadMap, n, len(b))
	}
	m := Map{StreamSize: int64(stream), VirtualSize: int64(vsize), Segments: make([]lsmt.Segment, n)}
	for i := range m.Segments {
		m.Segments[i] = lsmt.DecodeSegment(b[mapHeaderSize+i*lsmt.RecordSize:])
	}
	if _, err := m.Layer(nil, "map"); err != nil {
		return Map{}, fmt.Errorf("%w: %v", ErrBadMap, err)
	}
	return m, nil
}

// Layer returns the map as a layer whose data is stream (the uncompressed
// tar, m.StreamSize bytes).
func (m Map) Layer(stream io.ReaderAt, name string) (*lsmt.Mapped, error) {
	return lsmt.NewMapped(m.Segments, stream, m.StreamSize, m.VirtualSize, name)
}

// Parts are what an indexed layer is served from: the artifact's three blobs
// (the metadata layer through a reader, usually lazy) and the image's
// unchanged layer blob.
type Parts struct {
	Meta     io.ReaderAt // the metadata layer blob (an overlaybd layer blob)
	MetaSize int64
	// GzIndex holds the seek index's GzIndexSize bytes (without its range
	// table), read in pieces as the stream is read; its reads return the
	// index's own bytes (a caller fetching it checks them against its table).
	GzIndex     io.ReaderAt
	GzIndexSize int64
	// Seek, when set, is the seek index already opened (gzindex.Open) from
	// GzIndex, which is then not read here.
	Seek *gzindex.Index
	Map  []byte      // the map, verified against its digest
	Blob io.ReaderAt // the image's layer blob
	Name string      // the layer blob's digest, for errors
	// CacheBytes bounds the inflated spans kept (0: gzindex's default).
	CacheBytes int64
}

// Open returns the two lsmt layers an indexed layer stacks as, lowest first:
// its metadata layer, then its map over the layer's tar stream. The map must
// fit the seek index's stream, and both the virtual disk of the metadata layer.
func Open(p Parts) ([]lsmt.Layer, error) {
	layers, _, err := OpenIndexed(p)
	return layers, err
}

// OpenIndexed is Open that also returns the layer's seek index (e.g. to warm
// its windows beside a replay of the layer blob's reads).
func OpenIndexed(p Parts) ([]lsmt.Layer, *gzindex.Index, error) {
	x := p.Seek
	if x == nil {
		var err error
		if x, err = gzindex.Open(p.GzIndex, p.GzIndexSize, p.Name+" seek index"); err != nil {
			return nil, nil, fmt.Errorf("ociindex: layer %s: %w", p.Name, err)
		}
	}
	m, err := DecodeMap(p.Map)
	if err != nil {
		return nil, nil, fmt.Errorf("ociindex: layer %s: %w", p.Name, err)
	}
	if m.StreamSize != x.Size {
		return nil, nil, fmt.Errorf("%w: layer %s: map of a %d-byte stream, the seek index has %d", ErrBadMap, p.Name, m.StreamSize, x.Size)
	}
	meta, err := layerblob.Open(p.Meta, p.MetaSize, p.Name+" metadata")
	if err != nil {
		return nil, nil, fmt.Errorf("ociindex: layer %s: %w", p.Name, err)
	}
	if meta.VirtualSize() != m.VirtualSize {
		return nil, nil, fmt.Errorf("%w: layer %s: map of a %d-byte disk, the metadata layer has %d", ErrBadMap, p.Name, m.VirtualSize, meta.VirtualSize())
	}
	stream := gzindex.NewReader(p.Blob, x, gzindex.ReaderOptions{Name: p.Name, CacheBytes: p.CacheBytes})
	mapped, err := m.Layer(stream, p.Name)
	if err != nil {
		return nil, nil, fmt.Errorf("ociindex: layer %s: %w", p.Name, err)
	}
	return []lsmt.Layer{meta, mapped}, x, nil
}
