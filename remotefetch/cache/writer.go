package cache

import (
	"errors"
	"fmt"
	"syscall"
)

// errWriterDone reports use of a Writer after Commit or Abort.
var errWriterDone = errors.New("cache: writer already committed or aborted")

// maxWrite bounds one write to the data file. The kernel may back a write with page-cache
// folios as large as the write; once free memory is fragmented, allocating 1 MiB folios made
// writes several times slower (measured: 150-250 MB/s against 1.1 GB/s for 256 KiB writes).
const maxWrite = 256 << 10

// Writer fills one byte range of an Entry: WriteAt stores bytes of the range, Commit makes
// the whole range present, Abort gives the fill up. Nothing a Writer stores is present before
// its Commit returns, so HasRange never reports a fill that may still fail. A Writer is for
// one goroutine; several Writers may fill one Entry at once, over overlapping ranges too, as
// long as they store the blob's bytes.
type Writer struct {
	e        *Entry
	off, end int64
	gen      int      // the entry's generation when the fill began
	written  rangeSet // bytes stored so far
	done     bool     // committed or aborted
}

// NewWriter begins a fill of [off, end), a non-empty range of the blob that need not start or
// end on a unit boundary (a trace replay fetches exactly the ranges a workload read). A
// discard of the blob after NewWriter makes its Commit fail.
func (e *Entry) NewWriter(off, end int64) (*Writer, error) {
	if off < 0 || end <= off || end > e.lay.Size {
		return nil, fmt.Errorf("cache: %s: fill range %d-%d empty or outside size %d", e.dgst, off, end, e.lay.Size)
	}
	e.mu.Lock()
	gen := e.generation
	e.mu.Unlock()
	return &Writer{e: e, off: off, end: end, gen: gen}, nil
}

// WriteAt stores p at off, inside the Writer's range, in the data file. The bytes are not
// present until Commit; ReadAt returns them meanwhile (see Entry.ReadAt).
func (w *Writer) WriteAt(p []byte, off int64) (int, error) {
	e := w.e
	end := off + int64(len(p))
	if w.done {
		return 0, fmt.Errorf("cache: %s: write %d+%d: %w", e.dgst, off, len(p), errWriterDone)
	}
	if off < w.off || end > w.end {
		return 0, fmt.Errorf("cache: %s: write %d+%d outside fill range %d-%d", e.dgst, off, len(p), w.off, w.end)
	}
	e.fillMu.RLock()
	defer e.fillMu.RUnlock()
	for at := off; at < end; {
		n := min(end-at, maxWrite)
		_, err := e.data.WriteAt(p[at-off:at-off+n], at)
		if errors.Is(err, syscall.ENOSPC) && e.cache.freeSpace() {
			continue // an idle blob made room: write again
		}
		if err != nil {
			w.written.add(off, at)
			return int(at - off), fmt.Errorf("cache: %s: write %d+%d: %w", e.dgst, off, len(p), err)
		}
		at += n
	}
	w.written.add(off, end)
	return len(p), nil
}

// Commit makes the Writer's range present; WriteAt must have stored every byte of it. The
// units it makes whole (with bytes committed before) become durable within SyncDelay or at
// Release and survive a restart. Its other bytes are kept in memory only, while this Cache
// is open and the blob stays cached, so after a restart they are fetched again; nor do they
// count in Usage (they are at most a trace's worth). If the blob was discarded since
// NewWriter, nothing becomes present and Commit returns an error wrapping ErrDiscarded.
// complete reports that this Commit completed the blob, unverified, so the caller can Verify
// it. The Writer is done after Commit, whatever it returns.
func (w *Writer) Commit() (complete bool, err error) {
	e := w.e
	if w.done {
		return false, fmt.Errorf("cache: %s: commit %d-%d: %w", e.dgst, w.off, w.end, errWriterDone)
	}
	w.done = true
	if !w.written.covers(w.off, w.end) {
		return false, fmt.Errorf("cache: %s: commit %d-%d: not every byte was written", e.dgst, w.off, w.end)
	}
	e.fillMu.RLock()
	defer e.fillMu.RUnlock()
	e.mu.Lock()
	if e.generation != w.gen {
		e.mu.Unlock()
		return false, fmt.Errorf("cache: %s: commit %d-%d: %w", e.dgst, w.off, w.end, ErrDiscarded)
	}
	grown := e.markLocked(w.off, w.end)
	complete = grown > 0 && e.completeLocked()
	e.mu.Unlock()
	if grown > 0 {
		e.cache.grew(e, grown)
	}
	return complete, nil
}

// Abort ends the fill without making anything present. The bytes it stored stay in the data
// file until a fill or a discard replaces them. Abort after Commit does nothing.
func (w *Writer) Abort() { w.done = true }

// markLocked makes [off, end) present: a whole unit by its bit, a piece of a unit in parts,
// setting the unit's bit once its pieces cover it. It returns the bytes of the units it set.
// e.mu is held.
func (e *Entry) markLocked(off, end int64) (grown int64) {
	for i := e.lay.UnitOf(off); i <= e.lay.UnitOf(end-1); i++ {
		if e.present.has(i) {
			continue
		}
		uoff, n := e.lay.UnitRange(i)
		if lo, hi := max(off, uoff), min(end, uoff+n); lo > uoff || hi < uoff+n {
			e.parts.add(lo, hi)
			if !e.parts.covers(uoff, uoff+n) {
				continue
			}
		}
		e.present.set(i)
		grown += n
	}
	return grown
}
