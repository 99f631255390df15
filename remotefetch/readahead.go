package remotefetch

import (
	"sync"
	"sync/atomic"
)

// readahead is a Blob's sequential-read detection and the state of its readahead window.
type readahead struct {
	seqEnd atomic.Int64 // end of the previous read

	mu     sync.Mutex
	start  int // first unit of the last window issued
	end    int // first unit past the issued windows
	window int // current window in units, grown by sequential reads
}

// sequential records a read of [off, end) and reports whether it continues the previous one.
func (r *readahead) sequential(off, end int64) bool {
	return r.seqEnd.Swap(end) == off && off > 0
}

// reset shrinks the window back after a read that is not sequential.
func (r *readahead) reset() {
	r.mu.Lock()
	r.window = 0
	r.mu.Unlock()
}

// readahead keeps a window of units past the read's last unit in flight, for a sequential
// read of [off, end). The window starts at two units and doubles with every sequential read up
// to MaxRequestSize, as the kernel's readahead does: a file read through once (a library at
// container start) costs a little more than its own bytes, while a long sequential scan
// soon fetches in MaxRequestSize requests. It issues the next window only when the reader
// is within half a window of the end of the previous one, so requests stay window-sized.
//
// Like the kernel's, it must be earned: the read is in the last window readahead issued, or
// it needs bytes that no one has fetched or is fetching. A reader going through bytes that
// arrived by other means (a trace replay, bdd's metadata walk) is following what those
// already chose to fetch, and reading past it on speculation only takes link time from them
// (bench/FINDINGS.md: megabytes of a base layer's inode tables during a replayed start).
func (b *Blob) readahead(off, end int64) {
	lay := b.entry.Layout()
	last := lay.UnitOf(end - 1)
	maxWindow := int(max(1, b.f.opts.MaxRequestSize/lay.Unit))
	r := &b.ra
	r.mu.Lock()
	r.window = min(max(2, 2*r.window), maxWindow)
	from := max(r.end, last+1)
	if from-last > r.window/2 || from >= lay.Units() || !b.readaheadEarnedLocked(off, end) {
		r.mu.Unlock()
		return
	}
	to := min(from+r.window, lay.Units())
	r.start, r.end = from, to
	r.mu.Unlock()
	b.fill.fetchAhead(from, to-1)
}

// readaheadEarnedLocked reports whether a sequential read of [off, end) earns readahead (see
// readahead). b.ra.mu is held.
func (b *Blob) readaheadEarnedLocked(off, end int64) bool {
	lay := b.entry.Layout()
	if lay.UnitOf(end-1) >= b.ra.start && lay.UnitOf(off) < b.ra.end {
		return true
	}
	return !b.fill.claimed(off, end)
}
