// Package lsmt reads and writes overlaybd LSMT layers: the box between zfile and
// blockdev in the read path of docs/DESIGN.md.
//
// A committed layer (File, opened with Open over any io.ReaderAt such as a plain
// file or a zfile.Reader) maps logical sectors of a virtual disk to sectors of its
// own data through a sorted segment index. A Writable layer is an append-only data
// file plus an append-only index log (or one sparse data file); it is committed to
// a new File with Commit or frozen in place with Seal. A Stack merges the indexes of
// up to 255 lower layers once, at open, and puts an optional Writable on top, so a
// read is a binary search plus direct reads from the layers that own the data.
//
// The byte format is docs/FORMAT.md's LSMT section. All Segment fields are in sectors.
package lsmt

import "errors"

var (
	// ErrFormat reports bytes that are not a valid LSMT layer (bad magic, flags,
	// index or record).
	ErrFormat = errors.New("lsmt: invalid format")
	// ErrReadOnly reports a write to something that cannot be written: a stack
	// without a writable upper, or a sealed or closed writable layer.
	ErrReadOnly = errors.New("lsmt: read-only")
	// ErrUnaligned reports a write or discard whose offset or length is not a
	// multiple of SectorSize.
	ErrUnaligned = errors.New("lsmt: offset or length not sector aligned")
	// ErrRange reports an access outside the virtual disk.
	ErrRange = errors.New("lsmt: out of range")
	// ErrTooManyLayers reports a stack of more than MaxLayers lower layers.
	ErrTooManyLayers = errors.New("lsmt: too many layers")
	// ErrSealed reports an attempt to open a sealed layer as writable.
	ErrSealed = errors.New("lsmt: layer is sealed")
)
