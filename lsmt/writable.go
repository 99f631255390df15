package lsmt

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
)

// File names inside a writable layer's directory, as upstream names them.
const (
	DataFileName  = "writable_data"
	IndexFileName = "writable_index"
)

// CreateOptions configures Create.
type CreateOptions struct {
	VirtualSize int64 // bytes, a positive multiple of SectorSize
	// Sparse keeps the layer as one sparse file (LBA sector s at byte
	// 4096+512*s) instead of a data log plus an index log.
	Sparse           bool
	UUID, ParentUUID string // "" = none
}

// Writable is a writable LSMT layer. Reads, writes and discards are safe for
// concurrent use; writes and discards are applied in the order they take the
// index lock, which is also their order in the index log.
//
// In log mode (the default) data is appended to writable_data and one record
// per ≤4 MiB piece is appended to writable_index; later records win. In sparse
// mode the data file holds every sector at its LBA, present sectors are the
// file's data extents (SEEK_DATA/SEEK_HOLE), and a discard punches a hole: as
// upstream, holes are holes, so in a stack a discarded range of a sparse upper
// shows the lower layers again (it reads as zeros when nothing is below).
// Sparse presence has file system block granularity: a write marks its whole
// blocks present, and their unwritten sectors read as zeros.
type Writable struct {
	dir       string
	data      *os.File
	index     *os.File // nil in sparse mode
	header    Header   // of the data file
	vsize     int64
	sparse    bool
	blockSize int64 // sparse mode: file system block size, the unit a hole can have
	readSeg   readSegmentFunc

	mu       sync.RWMutex
	segs     segIndex
	dataEnd  int64 // log mode: byte offset of the next data append (reserved space included)
	indexEnd int64 // log mode: byte offset of the next index record
	dropped  int   // log mode: records cut from the log's end when it was opened
	sealed   bool
	closed   bool
}

// Create makes a new, empty writable layer in dir (created if missing). It
// fails if the layer's files already exist. Like os.Create it does not sync:
// call Sync to make the new layer durable.
func Create(dir string, opts CreateOptions) (*Writable, error) {
	if opts.VirtualSize <= 0 || opts.VirtualSize%SectorSize != 0 || opts.VirtualSize > 1<<59 {
		return nil, fmt.Errorf("lsmt: create %s: virtual size %d is not a positive multiple of %d", dir, opts.VirtualSize, SectorSize)
	}
	header := Header{
		Flags:       FlagHeader | FlagDataFile,
		VirtualSize: uint64(opts.VirtualSize),
		UUID:        opts.UUID,
		ParentUUID:  opts.ParentUUID,
		Version:     headerVersion,
		SubVersion:  headerSubVersion,
	}
	if opts.Sparse {
		header.Flags |= FlagSparse
	}
	dataHeader, err := header.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("lsmt: create %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("lsmt: create %s: %w", dir, err)
	}
	w := &Writable{dir: dir, header: header, vsize: opts.VirtualSize, sparse: opts.Sparse, dataEnd: HeaderSize, indexEnd: HeaderSize}
	created := []string{}
	fail := func(err error) (*Writable, error) {
		w.closeFiles()
		for _, p := range created {
			os.Remove(p)
		}
		return nil, fmt.Errorf("lsmt: create %s: %w", dir, err)
	}
	dataPath := filepath.Join(dir, DataFileName)
	if w.data, err = os.OpenFile(dataPath, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644); err != nil {
		return fail(err)
	}
	created = append(created, dataPath)
	if _, err := w.data.WriteAt(dataHeader, 0); err != nil {
		return fail(err)
	}
	if opts.Sparse {
		if err := w.data.Truncate(HeaderSize + opts.VirtualSize); err != nil {
			return fail(err)
		}
		if w.blockSize, err = fileBlockSize(w.data); err != nil {
			return fail(err)
		}
	} else {
		indexHeader := header
		indexHeader.Flags = FlagHeader
		indexHeader.IndexOffset = HeaderSize
		b, err := indexHeader.MarshalBinary()
		if err != nil {
			return fail(err)
		}
		indexPath := filepath.Join(dir, IndexFileName)
		if w.index, err = os.OpenFile(indexPath, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644); err != nil {
			return fail(err)
		}
		created = append(created, indexPath)
		if _, err := w.index.WriteAt(b, 0); err != nil {
			return fail(err)
		}
	}
	w.readSeg = w.readSegment
	return w, nil
}

// OpenWritable reopens the writable layer in dir. In log mode it replays the
// index log in order, newest record winning; a trailing partial record (a
// write cut short by a crash) is ignored and overwritten by the next write.
// A sealed layer gives ErrSealed: open its data file with Open.
func OpenWritable(dir string) (*Writable, error) {
	w, err := openWritable(dir)
	if err != nil {
		return nil, fmt.Errorf("lsmt: open writable %s: %w", dir, err)
	}
	return w, nil
}

func openWritable(dir string) (_ *Writable, err error) {
	w := &Writable{dir: dir}
	defer func() {
		if err != nil {
			w.closeFiles()
		}
	}()
	if w.data, err = os.OpenFile(filepath.Join(dir, DataFileName), os.O_RDWR, 0); err != nil {
		return nil, err
	}
	st, err := w.data.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	buf := make([]byte, HeaderSize)
	if _, err := readFull(w.data, buf, 0); err != nil {
		return nil, fmt.Errorf("%w: %s: read header: %w", ErrFormat, DataFileName, err)
	}
	if w.header, err = ParseHeader(buf); err != nil {
		return nil, fmt.Errorf("%s: %w", DataFileName, err)
	}
	if w.header.Flags&(FlagHeader|FlagDataFile) != FlagHeader|FlagDataFile || w.header.VirtualSize > 1<<59 {
		return nil, fmt.Errorf("%w: %s: header flags %#x, virtual size %d: not a writable data file", ErrFormat, DataFileName, w.header.Flags, w.header.VirtualSize)
	}
	w.vsize = int64(w.header.VirtualSize)
	w.readSeg = w.readSegment
	if w.header.Flags&FlagSparse != 0 {
		w.sparse = true
		if w.blockSize, err = fileBlockSize(w.data); err != nil {
			return nil, err
		}
		return w, w.loadSparseExtents()
	}
	if isSealed(w.data, size) {
		return nil, fmt.Errorf("%w: %s ends with an index and trailer", ErrSealed, DataFileName)
	}
	w.dataEnd = max(HeaderSize, (size+SectorSize-1)/SectorSize*SectorSize)
	if w.index, err = os.OpenFile(filepath.Join(dir, IndexFileName), os.O_RDWR, 0); err != nil {
		return nil, err
	}
	log, err := io.ReadAll(w.index)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", IndexFileName, err)
	}
	n, err := w.replay(log)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", IndexFileName, err)
	}
	w.indexEnd = HeaderSize + int64(n)*RecordSize
	if w.dropped = (len(log) - int(w.indexEnd) + RecordSize - 1) / RecordSize; w.dropped > 0 {
		// Later appends go where the first bad record was: the ones after it must not
		// come back to life at the next open.
		if err := w.index.Truncate(w.indexEnd); err != nil {
			return nil, fmt.Errorf("%s: cut the log after %d good records: %w", IndexFileName, n, err)
		}
		if err := w.index.Sync(); err != nil {
			return nil, fmt.Errorf("%s: %w", IndexFileName, err)
		}
	}
	return w, nil
}

// DroppedRecords is how many records (a partial one counts) OpenWritable cut from the end
// of the index log, from the first bad one on: what a power loss leaves when records
// reached the log but their data did not reach the data file. The layer reads as it was
// before the first of them was written.
func (w *Writable) DroppedRecords() int { return w.dropped }

// replay checks an index log's header and applies its records to the in-memory index in
// order, up to the first bad one (empty, past the virtual size, data outside the data
// file): a power loss can leave the log ahead of the data, and what follows a bad record
// cannot be trusted either. It returns how many records it applied; a bad header is an
// error.
func (w *Writable) replay(log []byte) (int, error) {
	if len(log) < HeaderSize {
		return 0, fmt.Errorf("%w: index log of %d bytes is shorter than its header", ErrFormat, len(log))
	}
	h, err := ParseHeader(log)
	if err != nil {
		return 0, err
	}
	if h.Flags&FlagHeader == 0 || h.Flags&FlagDataFile != 0 {
		return 0, fmt.Errorf("%w: header flags %#x: not a writable index file", ErrFormat, h.Flags)
	}
	records := log[HeaderSize:]
	n := len(records) / RecordSize
	vsectors := uint64(w.vsize) / SectorSize
	dataEnd := uint64(w.dataEnd) / SectorSize
	for i := range n {
		s := DecodeSegment(records[i*RecordSize:])
		if s.isPadding() {
			continue
		}
		s.Tag = 0
		if s.Length == 0 || s.End() > vsectors ||
			!s.Zeroed && (s.MOffset < HeaderSize/SectorSize || s.MOffset+uint64(s.Length) > dataEnd) {
			return i, nil
		}
		w.segs.insert(s)
	}
	return n, nil
}

// isSealed reports whether the data file ends with a sealed trailer whose
// index sits right before it.
func isSealed(f *os.File, size int64) bool {
	if size < 2*HeaderSize {
		return false
	}
	buf := make([]byte, HeaderSize)
	if _, err := readFull(f, buf, size-HeaderSize); err != nil {
		return false
	}
	t, err := ParseHeader(buf)
	return err == nil && t.Flags&FlagHeader == 0 && t.Flags&FlagSealed != 0 &&
		t.IndexSize < uint64(size)/RecordSize && t.IndexOffset+t.IndexSize*RecordSize+HeaderSize == uint64(size)
}

// checkAccess validates an aligned write or discard of n bytes at off.
func (w *Writable) checkAccess(op string, off, n int64) error {
	switch {
	case off%SectorSize != 0 || n%SectorSize != 0:
		return fmt.Errorf("lsmt: %s %d bytes at %d: %w", op, n, off, ErrUnaligned)
	case off < 0 || n < 0 || off > w.vsize || n > w.vsize-off:
		return fmt.Errorf("lsmt: %s %d bytes at %d: virtual size is %d: %w", op, n, off, w.vsize, ErrRange)
	}
	return nil
}

// checkWritableLocked reports why the layer cannot change, if it cannot.
func (w *Writable) checkWritableLocked() error {
	switch {
	case w.closed:
		return fmt.Errorf("lsmt: writable %s is closed: %w", w.dir, ErrReadOnly)
	case w.sealed:
		return fmt.Errorf("lsmt: writable %s is sealed: %w", w.dir, ErrReadOnly)
	}
	return nil
}

// WriteAt writes p at virtual byte offset off; both must be sector aligned.
func (w *Writable) WriteAt(p []byte, off int64) (int, error) {
	if err := w.checkAccess("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if w.sparse {
		return w.writeSparse(p, off)
	}
	// Reserve the data space under the lock, write the data outside it, then
	// log the records: a record never points at data not yet written.
	w.mu.Lock()
	if err := w.checkWritableLocked(); err != nil {
		w.mu.Unlock()
		return 0, err
	}
	moff := w.dataEnd
	w.dataEnd += int64(len(p))
	w.mu.Unlock()
	if _, err := w.data.WriteAt(p, moff); err != nil {
		return 0, fmt.Errorf("lsmt: write %d bytes at %d: data: %w", len(p), off, err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	recs := splitRecords(nil, uint64(off)/SectorSize, uint64(len(p))/SectorSize, uint64(moff)/SectorSize, false)
	if err := w.logLocked(recs); err != nil {
		return 0, fmt.Errorf("lsmt: write %d bytes at %d: %w", len(p), off, err)
	}
	return len(p), nil
}

// Discard makes n bytes at off read as zeros (in log mode a zeroed record,
// which also hides lower layers in a stack; in sparse mode a punched hole).
func (w *Writable) Discard(off, n int64) error {
	if err := w.checkAccess("discard", off, n); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	if w.sparse {
		return w.discardSparse(off, n)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	recs := splitRecords(nil, uint64(off)/SectorSize, uint64(n)/SectorSize, uint64(w.dataEnd)/SectorSize, true)
	if err := w.logLocked(recs); err != nil {
		return fmt.Errorf("lsmt: discard %d bytes at %d: %w", n, off, err)
	}
	return nil
}

// logLocked appends recs to the index log and applies them in memory.
func (w *Writable) logLocked(recs []Segment) error {
	if err := w.checkWritableLocked(); err != nil {
		return err
	}
	buf := make([]byte, len(recs)*RecordSize)
	for i, r := range recs {
		EncodeSegment(r, buf[i*RecordSize:])
	}
	if _, err := w.index.WriteAt(buf, w.indexEnd); err != nil {
		return fmt.Errorf("index log: %w", err)
	}
	w.indexEnd += int64(len(buf))
	for _, r := range recs {
		w.segs.insert(r)
	}
	return nil
}

// lookup returns the segments intersecting sectors [start, end), clipped.
func (w *Writable) lookup(start, end uint64) []Segment {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.segs.appendOverlapping(nil, start, end)
}

// ReadAt reads the virtual disk; unwritten ranges read as zeros.
func (w *Writable) ReadAt(p []byte, off int64) (int, error) {
	q, eof := clampRead(p, off, w.vsize)
	if q == nil {
		return 0, eof
	}
	start, end := sectorSpan(off, len(q))
	if err := fill(q, off, w.lookup(start, end), w.readSeg, zeroHole); err != nil {
		return 0, fmt.Errorf("lsmt: writable %s: read %d bytes at %d: %w", w.dir, len(q), off, err)
	}
	return len(q), eof
}

func (w *Writable) readSegment(p []byte, moffset int64, _ Segment) error {
	_, err := w.ReadData(p, moffset)
	return err
}

// ReadData reads the data file at physical byte offset moffset.
func (w *Writable) ReadData(p []byte, moffset int64) (int, error) {
	return readData(w.data, w.dir, p, moffset)
}

// VirtualSize returns the virtual disk size in bytes.
func (w *Writable) VirtualSize() int64 { return w.vsize }

// Size returns the virtual disk size, like VirtualSize.
func (w *Writable) Size() int64 { return w.vsize }

// Segments returns a snapshot of the index, sorted.
func (w *Writable) Segments() []Segment {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.segs.all()
}

// Header returns the data file's header.
func (w *Writable) Header() Header { return w.header }

// Sparse reports whether the layer is in sparse mode.
func (w *Writable) Sparse() bool { return w.sparse }

// Sync makes every completed write and discard durable.
func (w *Writable) Sync() error {
	if err := w.data.Sync(); err != nil {
		return fmt.Errorf("lsmt: sync %s: %w", DataFileName, err)
	}
	if w.index != nil {
		if err := w.index.Sync(); err != nil {
			return fmt.Errorf("lsmt: sync %s: %w", IndexFileName, err)
		}
	}
	return nil
}

// Close closes the layer's files; it does not sync them. Closing twice is a no-op.
func (w *Writable) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	if err := w.closeFiles(); err != nil {
		return fmt.Errorf("lsmt: close %s: %w", w.dir, err)
	}
	return nil
}

func (w *Writable) closeFiles() error {
	var errs []error
	for _, f := range []*os.File{w.data, w.index} {
		if f != nil {
			errs = append(errs, f.Close())
		}
	}
	return errors.Join(errs...)
}
