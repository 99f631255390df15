package lsmt

import (
	"fmt"
	"io"
)

// CommitOptions configures Commit and Merge.
type CommitOptions struct {
	UUID string // of the new layer; "" = none (all-zero UUID)
	// ParentUUID of the new layer; "" keeps the source's (the writable's, or
	// for Merge the lowest layer's) when it has a Header.
	ParentUUID string
	Message    string // stored as the header's user tag, at most 255 bytes
}

// CommitStats describes a committed file.
type CommitStats struct {
	Records   int   // index records, padding not counted
	DataBytes int64 // live data bytes copied
	Size      int64 // bytes written in all
}

// copyChunk bounds the buffer used to copy data while committing.
const copyChunk = 1 << 20

// indexPageRecords is the multiple a committed index is padded to (4 KiB).
const indexPageRecords = HeaderSize / RecordSize

// headerOf is implemented by layers that carry a header (File, Writable).
type headerOf interface{ Header() Header }

// Commit writes l as a committed LSMT file to out, in one pass and in
// upstream's layout: header (flags 0x7), live data in ascending logical order
// from sector 8, the sorted index padded to whole 4 KiB pages, trailer (0x6).
// Adjacent data records whose data ends up contiguous are merged while the
// merged length stays below MaxSegmentLength. out may be a zfile.Writer.
func Commit(l Layer, out io.Writer, opts CommitOptions) (CommitStats, error) {
	if opts.ParentUUID == "" {
		if h, ok := l.(headerOf); ok {
			opts.ParentUUID = h.Header().ParentUUID
		}
	}
	read := func(p []byte, moffset int64, _ Segment) error {
		_, err := l.ReadData(p, moffset)
		return err
	}
	st, err := writeCommitted(out, l.Segments(), read, l.VirtualSize(), opts)
	if err != nil {
		return st, fmt.Errorf("lsmt: commit: %w", err)
	}
	return st, nil
}

// Commit writes the layer's current content as a committed file; see Commit.
func (w *Writable) Commit(out io.Writer, opts CommitOptions) (CommitStats, error) {
	return Commit(w, out, opts)
}

// Merge flattens layers (lowest first, as for NewStack) into one committed
// file: the upper layer wins and zeroed records are kept, so the result can
// replace the stack on top of the lowest layer's parent.
func Merge(layers []Layer, out io.Writer, opts CommitOptions) (CommitStats, error) {
	if len(layers) == 0 {
		return CommitStats{}, fmt.Errorf("lsmt: merge: no layers")
	}
	if len(layers) > MaxLayers {
		return CommitStats{}, fmt.Errorf("lsmt: merge %d layers: %w", len(layers), ErrTooManyLayers)
	}
	if opts.ParentUUID == "" {
		if h, ok := layers[0].(headerOf); ok {
			opts.ParentUUID = h.Header().ParentUUID
		}
	}
	read := func(p []byte, moffset int64, s Segment) error {
		_, err := layers[s.Tag].ReadData(p, moffset)
		return err
	}
	st, err := writeCommitted(out, mergeIndexes(layers), read, topVirtualSize(layers), opts)
	if err != nil {
		return st, fmt.Errorf("lsmt: merge %d layers: %w", len(layers), err)
	}
	return st, nil
}

// compact lays segs out as a committed index: data from sector 8 in order,
// zeroed records pointing at the next data sector, mergeable neighbours merged.
func compact(segs []Segment) (index []Segment, dataSectors uint64) {
	next := uint64(HeaderSize / SectorSize)
	for _, s := range segs {
		rec := Segment{Offset: s.Offset, Length: s.Length, MOffset: next, Zeroed: s.Zeroed}
		if !s.Zeroed {
			next += uint64(s.Length)
			if n := len(index); n > 0 {
				prev := &index[n-1]
				if !prev.Zeroed && prev.End() == s.Offset && prev.Length+s.Length < MaxSegmentLength {
					prev.Length += s.Length
					continue
				}
			}
		}
		index = append(index, rec)
	}
	return index, next - HeaderSize/SectorSize
}

// writeCommitted streams the committed file for segs (sorted, non-overlapping),
// reading each data segment's bytes with read.
func writeCommitted(out io.Writer, segs []Segment, read readSegmentFunc, vsize int64, opts CommitOptions) (CommitStats, error) {
	var st CommitStats
	index, dataSectors := compact(segs)
	header := Header{
		Flags:       FlagHeader | FlagDataFile | FlagSealed,
		VirtualSize: uint64(vsize),
		UUID:        opts.UUID,
		ParentUUID:  opts.ParentUUID,
		Version:     headerVersion,
		SubVersion:  headerSubVersion,
		Tag:         opts.Message,
	}
	headerBytes, err := header.MarshalBinary()
	if err != nil {
		return st, err
	}
	trailer := header
	trailer.Flags = FlagDataFile | FlagSealed
	trailer.IndexOffset = (HeaderSize/SectorSize + dataSectors) * SectorSize
	padded := (len(index) + indexPageRecords - 1) / indexPageRecords * indexPageRecords
	trailer.IndexSize = uint64(padded)
	trailerBytes, err := trailer.MarshalBinary()
	if err != nil {
		return st, err
	}

	write := func(p []byte) error {
		n, err := out.Write(p)
		st.Size += int64(n)
		if err == nil && n != len(p) {
			err = io.ErrShortWrite
		}
		return err
	}
	if err := write(headerBytes); err != nil {
		return st, fmt.Errorf("write header: %w", err)
	}
	buf := make([]byte, min(copyChunk, int64(dataSectors)*SectorSize))
	for _, s := range segs {
		if s.Zeroed {
			continue
		}
		moff, remaining := int64(s.MOffset)*SectorSize, int64(s.Length)*SectorSize
		for remaining > 0 {
			chunk := buf[:min(remaining, int64(len(buf)))]
			if err := read(chunk, moff, s); err != nil {
				return st, fmt.Errorf("read data of sectors [%d, +%d): %w", s.Offset, s.Length, err)
			}
			if err := write(chunk); err != nil {
				return st, fmt.Errorf("write data: %w", err)
			}
			moff += int64(len(chunk))
			remaining -= int64(len(chunk))
			st.DataBytes += int64(len(chunk))
		}
	}
	indexBytes := make([]byte, padded*RecordSize)
	for i := range padded {
		rec := Segment{Offset: invalidOffset}
		if i < len(index) {
			rec = index[i]
		}
		EncodeSegment(rec, indexBytes[i*RecordSize:])
	}
	if err := write(indexBytes); err != nil {
		return st, fmt.Errorf("write index: %w", err)
	}
	if err := write(trailerBytes); err != nil {
		return st, fmt.Errorf("write trailer: %w", err)
	}
	st.Records = len(index)
	return st, nil
}

// Seal freezes a log-mode writable layer in place: its index (sorted, no
// padding) and a trailer (flags 0x6) are appended to the data file, which then
// opens with Open. The layer stays readable; writes fail with ErrReadOnly.
func (w *Writable) Seal() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.checkWritableLocked(); err != nil {
		return err
	}
	if w.sparse {
		return fmt.Errorf("lsmt: seal %s: a sparse layer cannot be sealed; commit it", w.dir)
	}
	segs := w.segs.all()
	trailer := w.header
	trailer.Flags = FlagDataFile | FlagSealed
	trailer.IndexOffset = uint64(w.dataEnd)
	trailer.IndexSize = uint64(len(segs))
	trailerBytes, err := trailer.MarshalBinary()
	if err != nil {
		return fmt.Errorf("lsmt: seal %s: %w", w.dir, err)
	}
	buf := make([]byte, len(segs)*RecordSize, len(segs)*RecordSize+HeaderSize)
	for i, s := range segs {
		EncodeSegment(s, buf[i*RecordSize:])
	}
	buf = append(buf, trailerBytes...)
	if _, err := w.data.WriteAt(buf, w.dataEnd); err != nil {
		return fmt.Errorf("lsmt: seal %s: %w", w.dir, err)
	}
	if err := w.data.Sync(); err != nil {
		return fmt.Errorf("lsmt: seal %s: sync: %w", w.dir, err)
	}
	w.sealed = true
	return nil
}
