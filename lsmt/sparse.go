package lsmt

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// fileBlockSize returns the file system's block size for f: the granularity
// of holes in a sparse layer.
func fileBlockSize(f *os.File) (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	return max(int64(st.Blksize), SectorSize), nil
}

// loadSparseExtents builds the index of a sparse layer from the data file's
// data extents: each present sector maps to itself (MOffset = 8 + Offset).
func (w *Writable) loadSparseExtents() error {
	fd := int(w.data.Fd())
	end := HeaderSize + w.vsize
	for pos := int64(HeaderSize); pos < end; {
		from, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: seek data at %d: %w", DataFileName, pos, err)
		}
		if from >= end {
			return nil
		}
		to, err := unix.Seek(fd, from, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("%s: seek hole at %d: %w", DataFileName, from, err)
		}
		to = min(to, end)
		first := uint64(from-HeaderSize) / SectorSize
		last := (uint64(to-HeaderSize) + SectorSize - 1) / SectorSize
		for _, s := range splitRecords(nil, first, last-first, first+HeaderSize/SectorSize, false) {
			w.segs.insert(s)
		}
		pos = to
	}
	return nil
}

// writeSparse writes in place. The file system allocates whole blocks, and
// SEEK_DATA will report the whole block after a reopen, so the index marks
// the write's blocks present from the start: sectors of a block that were
// never written read as zeros, also in a stack, before and after a reopen.
func (w *Writable) writeSparse(p []byte, off int64) (int, error) {
	w.mu.RLock()
	err := w.checkWritableLocked()
	w.mu.RUnlock()
	if err != nil {
		return 0, err
	}
	if _, err := w.data.WriteAt(p, HeaderSize+off); err != nil {
		return 0, fmt.Errorf("lsmt: write %d bytes at %d: %w", len(p), off, err)
	}
	bs := w.blockSize
	from := max((HeaderSize+off)/bs*bs, HeaderSize) - HeaderSize
	to := min((HeaderSize+off+int64(len(p))+bs-1)/bs*bs, HeaderSize+w.vsize) - HeaderSize
	w.mu.Lock()
	defer w.mu.Unlock()
	first := uint64(from) / SectorSize
	for _, s := range splitRecords(nil, first, uint64(to-from)/SectorSize, first+HeaderSize/SectorSize, false) {
		w.segs.insert(s)
	}
	return len(p), nil
}

// discardSparse punches a hole. Only whole file system blocks become holes;
// the sectors at unaligned edges are zeroed in place and stay present, which
// is what SEEK_DATA reports for them after a reopen too.
func (w *Writable) discardSparse(off, n int64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.checkWritableLocked(); err != nil {
		return err
	}
	err := unix.Fallocate(int(w.data.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, HeaderSize+off, n)
	if err != nil {
		return fmt.Errorf("lsmt: discard %d bytes at %d: punch hole: %w", n, off, err)
	}
	bs := w.blockSize
	from := (HeaderSize + off + bs - 1) / bs * bs
	to := (HeaderSize + off + n) / bs * bs
	if from < to {
		w.segs.cut(uint64(from-HeaderSize)/SectorSize, uint64(to-HeaderSize)/SectorSize)
	}
	return nil
}
