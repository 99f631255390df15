package cache

import (
	"fmt"
	"io"
	"os"
	"slices"
	"sync"

	"github.com/opencontainers/go-digest"
)

// Layout is how a blob divides into fill units: unit i is the bytes [i*Unit, (i+1)*Unit),
// the last one cut short at Size.
type Layout struct {
	Size int64 // the blob's size in bytes
	Unit int64 // the fill unit in bytes
}

// Units is the number of fill units of the blob.
func (l Layout) Units() int { return unitCount(l.Size, l.Unit) }

// UnitRange is the byte range [off, off+n) of unit i.
func (l Layout) UnitRange(i int) (off, n int64) {
	off = int64(i) * l.Unit
	return off, min(l.Unit, l.Size-off)
}

// UnitOf is the unit holding byte off.
func (l Layout) UnitOf(off int64) int { return int(off / l.Unit) }

// Entry is one held cached blob. Readers ask HasRange and then ReadAt; fillers ask Missing,
// store bytes through a Writer (NewWriter) and make them present with Writer.Commit. A byte
// is present once a Commit covering it returned without error, until the blob is discarded
// (Verify on a mismatch). It is safe for concurrent use.
type Entry struct {
	cache *Cache
	key   Key           // changes on Promote; guarded by cache.mu
	dgst  digest.Digest // key.Digest
	lay   Layout
	units int

	data   *os.File
	bmFile *os.File
	parts  *rangeSet // present bytes outside present units; shared with the record, so it outlives this hold; guarded by mu

	// fillMu orders writes and commits (shared) against discard (exclusive), so a discarded
	// unit's bit is never set over truncated data.
	fillMu sync.RWMutex
	// verifyMu makes concurrent Verify calls hash the blob once.
	verifyMu sync.Mutex

	mu             sync.Mutex
	present        bitmap // units whose data is in the data file (maybe not yet durable)
	durable        bitmap // units whose bit is persisted
	flags          uint64
	persistedFlags uint64
	generation     int       // bumped by discard; a sync or commit of an older generation is dropped
	bitmapSyncs    int       // times the bitmap file was synced (tests)
	pins           int       // syncs in progress; files stay open until they finish
	unpinned       sync.Cond // signalled when pins drops to 0
}

// Layout is how the blob divides into fill units.
func (e *Entry) Layout() Layout { return e.lay }

// HasRange reports whether every byte of [off, end) is present.
func (e *Entry) HasRange(off, end int64) bool {
	if off >= end {
		return true
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for i := e.lay.UnitOf(off); i <= e.lay.UnitOf(end-1); i++ {
		if e.present.has(i) {
			continue
		}
		uoff, n := e.lay.UnitRange(i)
		if !e.parts.covers(max(off, uoff), min(end, uoff+n)) {
			return false
		}
	}
	return true
}

// ReadAt reads the data file: bytes HasRange reports present are the blob's. It also returns
// bytes a Writer stored and has not committed (or aborted), which only the filler that stored
// them can vouch for; every other byte is unspecified. At the end of the blob it returns
// io.EOF with the bytes before it, as io.ReaderAt does.
func (e *Entry) ReadAt(p []byte, off int64) (int, error) {
	n, err := e.data.ReadAt(p, off)
	if err == io.EOF && off+int64(n) == e.lay.Size {
		err = nil
		if n < len(p) {
			err = io.EOF
		}
	}
	return n, err
}

// Missing returns the units in [first, last] that are not present as a whole.
func (e *Entry) Missing(first, last int) []int {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []int
	for i := first; i <= last; i++ {
		if !e.present.has(i) {
			out = append(out, i)
		}
	}
	return out
}

// NeedsVerify reports whether every unit is present and the blob has not been checked against
// its digest yet.
func (e *Entry) NeedsVerify() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.completeLocked()
}

// completeLocked is NeedsVerify with e.mu held.
func (e *Entry) completeLocked() bool {
	return e.present.count() == e.units && e.flags&flagVerified == 0
}

func (e *Entry) filledBytes() int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return filledBytes(e.present, e.lay.Unit, e.lay.Size)
}

// Verify hashes the blob unless it was verified before; the blob must be complete. A match is
// recorded in the bitmap; a mismatch discards every present byte, so pending Writers' commits
// fail with ErrDiscarded, and returns ErrDigestMismatch. Concurrent calls hash once.
func (e *Entry) Verify() error {
	e.verifyMu.Lock()
	defer e.verifyMu.Unlock()
	e.mu.Lock()
	verified := e.flags&flagVerified != 0
	e.mu.Unlock()
	if verified {
		return nil
	}
	v := e.dgst.Verifier()
	if _, err := io.Copy(v, io.NewSectionReader(e.data, 0, e.lay.Size)); err != nil {
		return fmt.Errorf("cache: verify %s: %w", e.dgst, err)
	}
	if !v.Verified() {
		if err := e.discard(); err != nil {
			return fmt.Errorf("cache: discard %s: %w (after %w)", e.dgst, err, ErrDigestMismatch)
		}
		return fmt.Errorf("cache: blob %s: %w; cached copy discarded", e.dgst, ErrDigestMismatch)
	}
	e.mu.Lock()
	e.flags |= flagVerified
	e.mu.Unlock()
	c := e.cache
	c.mu.Lock()
	if r := c.records[e.key]; r != nil {
		r.verified = true
	}
	c.mu.Unlock()
	return e.sync()
}

// isVerified reports whether the complete blob matched its digest.
func (e *Entry) isVerified() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.flags&flagVerified != 0
}

// discard forgets every present byte: bitmap first, then the data.
func (e *Entry) discard() error {
	e.fillMu.Lock()
	defer e.fillMu.Unlock()
	e.mu.Lock()
	e.present, e.durable, e.flags = newBitmap(e.units), newBitmap(e.units), 0
	e.parts.reset()
	e.generation++
	err := e.persistBitmap(e.present, 0)
	if err == nil {
		// Durable before the data goes: after a power loss the old bitmap must not claim
		// units whose bytes were dropped.
		err = e.syncBitmap()
	}
	e.mu.Unlock()
	if err != nil {
		return err
	}
	beforeDataDropped(e)
	if err := e.data.Truncate(0); err != nil {
		return err
	}
	if err := e.data.Truncate(e.lay.Size); err != nil {
		return err
	}
	c := e.cache
	c.mu.Lock()
	if r := c.records[e.key]; r != nil {
		c.usage -= r.filled
		r.filled = 0
	}
	c.mu.Unlock()
	return nil
}

// sync makes present units durable: fdatasync the data, then persist their bits.
func (e *Entry) sync() error {
	e.mu.Lock()
	snapshot, flags, gen := e.present.clone(), e.flags, e.generation
	same := slices.Equal(snapshot, e.durable) && flags == e.persistedFlags
	e.mu.Unlock()
	if same {
		return nil
	}
	if err := e.data.Sync(); err != nil {
		return fmt.Errorf("cache: sync %s: %w", e.dgst, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if gen != e.generation {
		return nil // discarded meanwhile: the snapshot describes data that is gone
	}
	// A concurrent sync may have persisted a newer snapshot: never write fewer bits.
	for i, w := range e.durable {
		snapshot[i] |= w
	}
	flags |= e.persistedFlags
	if err := e.persistBitmap(snapshot, flags); err != nil {
		return err
	}
	e.durable = snapshot
	return nil
}

// persistBitmap writes the bitmap file; e.mu must be held (or e not yet shared).
// syncBitmap makes the bitmap file durable.
func (e *Entry) syncBitmap() error {
	if err := e.bmFile.Sync(); err != nil {
		return fmt.Errorf("cache: sync bitmap %s: %w", e.dgst, err)
	}
	e.bitmapSyncs++
	return nil
}

// beforeDataDropped is a test hook: discard calls it after the empty bitmap is durable,
// before the data is dropped.
var beforeDataDropped = func(*Entry) {}

func (e *Entry) persistBitmap(bm bitmap, flags uint64) error {
	if _, err := e.bmFile.WriteAt(bm.encode(e.lay.Unit, e.lay.Size, flags, e.units), 0); err != nil {
		return fmt.Errorf("cache: write bitmap %s: %w", e.dgst, err)
	}
	e.persistedFlags = flags
	return nil
}

func (e *Entry) pin() {
	e.mu.Lock()
	e.pins++
	e.mu.Unlock()
}

func (e *Entry) unpin() {
	e.mu.Lock()
	e.pins--
	if e.pins == 0 {
		e.unpinned.Broadcast()
	}
	e.mu.Unlock()
}

// closeFiles waits for background syncs of e, then closes its files.
func (e *Entry) closeFiles() {
	e.mu.Lock()
	for e.pins > 0 {
		e.unpinned.Wait()
	}
	e.mu.Unlock()
	_ = e.data.Close()
	_ = e.bmFile.Close()
}

// Release drops the caller's hold on e (see Cache.Acquire). After the last one, e's Writers
// fail.
func (e *Entry) Release() error { return e.cache.release(e) }
