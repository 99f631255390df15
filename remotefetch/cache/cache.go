// Package cache is the persistent cache box of the read path in docs/DESIGN.md: it sits between
// remotefetch.Blob (which fetches missing ranges from the registry) and the readers above it.
// It knows nothing about HTTP; it stores bytes by Key: a blob digest and the scope of trust the
// bytes were fetched under (remotefetch says which: see Key).
//
// Each blob is a sparse file <Dir>/<algo>/<hex>[.<scope>].data plus <hex>[.<scope>].bitmap, a
// fill bitmap with one bit per fill unit. A unit's bit is persisted only after its data has been fdatasync'ed, so
// after a crash every set bit still describes durable data; units written but not yet synced
// are simply fetched again. The bitmap survives restarts, so a new process re-uses every
// filled unit. Bytes reach an Entry through a Writer, which makes its range present only when
// it commits. Ranges committed outside whole units (a trace replay's exact ranges) are present
// while this process runs, and are fetched again after a restart. A capacity limit evicts
// whole blobs that no one holds, least recently used first (recency is the bitmap file's
// mtime, so it too survives restarts).
package cache

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// DefaultFillUnit is the default granularity of fills and of the bitmap.
const DefaultFillUnit = 256 << 10

// MaxUnits bounds the fill units of one blob: its bitmap is in memory twice while the blob is
// open (32 MiB each at this bound), and the size comes from outside.
const MaxUnits = 1 << 28

// ErrDigestMismatch reports a complete blob whose bytes do not match its digest; the cached
// copy has been discarded.
var ErrDigestMismatch = errors.New("cache: digest mismatch")

// ErrDiscarded reports a fill committed across a discard of its blob; it was not made present.
var ErrDiscarded = errors.New("cache: entry discarded while the range was filled")

// ErrClosed reports use of a closed Cache.
var ErrClosed = errors.New("cache: closed")

// Key names a cache entry: the blob's digest and a scope. Entries of one digest in different
// scopes are different entries with their own bytes, never shared: a blob whose bytes were
// checked against one image's range table, or not checked at all yet, must not serve another
// image that pins other checks. Scope is "" or 1 to 64 lower-case hex digits.
type Key struct {
	Digest digest.Digest
	Scope  string
}

func (k Key) String() string {
	if k.Scope == "" {
		return k.Digest.String()
	}
	return k.Digest.String() + "." + k.Scope
}

// validate checks the digest and the scope's form.
func (k Key) validate() error {
	if err := k.Digest.Validate(); err != nil {
		return err
	}
	if len(k.Scope) > 64 || strings.Trim(k.Scope, "0123456789abcdef") != "" {
		return fmt.Errorf("scope %q is not at most 64 lower-case hex digits", k.Scope)
	}
	return nil
}

// Options configure a Cache.
type Options struct {
	Dir      string // required
	FillUnit int64  // default DefaultFillUnit
	Capacity int64  // bytes of filled units; 0 = unlimited
	// SyncDelay is how long written units may wait before they are made durable together
	// (one fdatasync for many units). Default 200 ms.
	SyncDelay time.Duration
	Logger    *slog.Logger
}

// Cache holds the cached blobs of one directory. It is safe for concurrent use. Only one
// Cache may use a directory at a time.
type Cache struct {
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	records map[Key]*record
	usage   int64 // filled bytes over all records
	closed  bool

	syncKick chan struct{} // a unit was written
	stop     chan struct{} // closed by Close
	syncDone chan struct{} // closed when syncLoop has returned
}

// record is the cache's bookkeeping for one blob, open or not.
type record struct {
	key      Key
	filled   int64 // bytes of filled units
	lastUse  time.Time
	entry    *Entry // non-nil while held
	refs     int
	dirty    bool // entry has units written but not yet durable
	unitSize int64
	parts    *rangeSet // bytes committed outside whole units, while this process runs
	verified bool      // the complete blob matched its digest
}

// Open opens (creating if needed) the cache in opts.Dir and indexes the blobs already there.
// Files that are not a consistent data+bitmap pair are removed.
func Open(opts Options) (*Cache, error) {
	if opts.Dir == "" {
		return nil, errors.New("cache: no directory")
	}
	if opts.FillUnit == 0 {
		opts.FillUnit = DefaultFillUnit
	}
	if opts.FillUnit < 4096 || opts.FillUnit%4096 != 0 {
		return nil, fmt.Errorf("cache: fill unit %d is not a positive multiple of 4096", opts.FillUnit)
	}
	if opts.SyncDelay == 0 {
		opts.SyncDelay = 200 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	c := &Cache{opts: opts, log: opts.Logger, records: map[Key]*record{},
		syncKick: make(chan struct{}, 1), stop: make(chan struct{}), syncDone: make(chan struct{})}
	if err := c.scan(); err != nil {
		return nil, err
	}
	go c.syncLoop()
	return c, nil
}

// scan indexes <Dir>/<algo>/<hex>.bitmap files.
func (c *Cache) scan() error {
	algos, err := os.ReadDir(c.opts.Dir)
	if err != nil {
		return fmt.Errorf("cache: scan %s: %w", c.opts.Dir, err)
	}
	for _, a := range algos {
		if !a.IsDir() {
			continue
		}
		files, err := os.ReadDir(filepath.Join(c.opts.Dir, a.Name()))
		if err != nil {
			return fmt.Errorf("cache: scan: %w", err)
		}
		for _, f := range files {
			name, ok := strings.CutSuffix(f.Name(), ".bitmap")
			if !ok {
				continue
			}
			hex, scope, _ := strings.Cut(name, ".")
			k := Key{Digest: digest.NewDigestFromEncoded(digest.Algorithm(a.Name()), hex), Scope: scope}
			if k.validate() != nil {
				continue
			}
			c.indexExisting(k)
		}
	}
	return nil
}

func (c *Cache) indexExisting(d Key) {
	bmPath, dataPath := c.paths(d)
	raw, err := os.ReadFile(bmPath)
	var unit, size int64
	if err == nil {
		unit, size, err = peekBitmapHeader(raw)
	}
	var bm bitmap
	var flags uint64
	if err == nil {
		bm, flags, err = decodeBitmap(raw, unit, size)
	}
	st, serr := os.Stat(bmPath)
	if err != nil || serr != nil || unit != c.opts.FillUnit {
		c.log.Warn("cache: discarding unusable entry", "entry", d.String(), "err", err)
		_ = os.Remove(bmPath)
		_ = os.Remove(dataPath)
		return
	}
	c.records[d] = &record{key: d, filled: filledBytes(bm, unit, size), lastUse: st.ModTime(), unitSize: unit,
		verified: flags&flagVerified != 0}
	c.usage += c.records[d].filled
}

// filledBytes is the number of blob bytes covered by the set bits of bm.
func filledBytes(bm bitmap, unit, size int64) int64 {
	n := int64(bm.count()) * unit
	last := unitCount(size, unit) - 1
	if last >= 0 && bm.has(last) {
		n -= unit*int64(last+1) - size // the last unit is short
	}
	return n
}

func (c *Cache) paths(k Key) (bitmapPath, dataPath string) {
	name := k.Digest.Encoded()
	if k.Scope != "" {
		name += "." + k.Scope
	}
	base := filepath.Join(c.opts.Dir, string(k.Digest.Algorithm()), name)
	return base + ".bitmap", base + ".data"
}

// FillUnit is the cache's fill unit in bytes.
func (c *Cache) FillUnit() int64 { return c.opts.FillUnit }

// Usage is the number of filled bytes over all cached blobs.
func (c *Cache) Usage() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.usage
}

// Acquire is AcquireKey of blob d in the shared scope.
func (c *Cache) Acquire(d digest.Digest, size int64) (*Entry, error) {
	return c.AcquireKey(Key{Digest: d}, size)
}

// AcquireKey returns the entry of key d for a blob of the given size, creating empty files if
// it is not cached, and holds it (it will not be evicted) until Release. Acquiring a held
// entry returns the same Entry; each Acquire needs its own Release.
func (c *Cache) AcquireKey(d Key, size int64) (*Entry, error) {
	if err := d.validate(); err != nil {
		return nil, fmt.Errorf("cache: acquire %q: %w", d, err)
	}
	if size < 0 || size > MaxUnits*c.opts.FillUnit {
		return nil, fmt.Errorf("cache: acquire %s: size %d is not in [0, %d] (%d fill units of %d bytes)",
			d, size, MaxUnits*c.opts.FillUnit, int64(MaxUnits), c.opts.FillUnit)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	r := c.records[d]
	if r != nil && r.entry != nil {
		if r.entry.lay.Size != size {
			return nil, fmt.Errorf("cache: acquire %s with size %d: held with size %d", d, size, r.entry.lay.Size)
		}
		r.refs++
		r.lastUse = time.Now()
		return r.entry, nil
	}
	e, fresh, err := c.openEntry(d, size)
	if err != nil {
		return nil, err
	}
	if r == nil {
		r = &record{key: d, unitSize: c.opts.FillUnit}
		c.records[d] = r
	}
	if r.parts == nil || fresh {
		r.parts = &rangeSet{}
	}
	e.parts = r.parts
	r.verified = e.isVerified()
	c.usage += e.filledBytes() - r.filled
	r.filled = e.filledBytes()
	r.entry, r.refs, r.lastUse = e, 1, time.Now()
	return e, nil
}

// openEntry opens or creates the files of blob d. A bitmap written for another size or unit
// is discarded together with its data (fresh reports that the data file is new).
func (c *Cache) openEntry(d Key, size int64) (e *Entry, fresh bool, err error) {
	bmPath, dataPath := c.paths(d)
	if err := os.MkdirAll(filepath.Dir(bmPath), 0o700); err != nil {
		return nil, false, fmt.Errorf("cache: %w", err)
	}
	n := unitCount(size, c.opts.FillUnit)
	bm, flags := newBitmap(n), uint64(0)
	fresh = true
	if raw, err := os.ReadFile(bmPath); err == nil {
		fresh = false
		if got, f, derr := decodeBitmap(raw, c.opts.FillUnit, size); derr == nil {
			bm, flags = got, f
		} else {
			c.log.Warn("cache: discarding entry", "entry", d.String(), "err", derr)
			_ = os.Remove(dataPath)
			fresh = true
		}
	}
	if !fresh {
		// The bitmap describes one data file: if that is gone or cut (a crash, a cleanup),
		// its units would read as zeros, so the entry starts anew.
		if st, err := os.Stat(dataPath); err != nil || st.Size() != size {
			c.log.Warn("cache: discarding entry whose data file is gone or resized", "entry", d.String(), "err", err)
			_ = os.Remove(dataPath)
			bm, flags, fresh = newBitmap(n), 0, true
		}
	}
	data, err := os.OpenFile(dataPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("cache: open %s: %w", d, err)
	}
	if err := data.Truncate(size); err != nil {
		data.Close()
		return nil, false, fmt.Errorf("cache: size %s: %w", d, err)
	}
	bmf, err := os.OpenFile(bmPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		data.Close()
		return nil, false, fmt.Errorf("cache: open bitmap %s: %w", d, err)
	}
	e = &Entry{cache: c, key: d, dgst: d.Digest, lay: Layout{Size: size, Unit: c.opts.FillUnit}, units: n, data: data, bmFile: bmf,
		present: bm, durable: bm.clone(), flags: flags}
	e.unpinned.L = &e.mu
	if err := e.persistBitmap(bm, flags); err != nil {
		e.closeFiles()
		return nil, false, err
	}
	return e, fresh, nil
}

// Holds reports whether the cache has any bytes of entry k.
func (c *Cache) Holds(k Key) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.records[k]
	return r != nil && (r.filled > 0 || (r.parts != nil && len(r.parts.ranges) > 0))
}

// Verified reports whether the cache holds blob d in the shared scope (Key.Scope ""), complete
// and matched against its digest: bytes that may serve anyone.
func (c *Cache) Verified(d digest.Digest) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.records[Key{Digest: d}]
	return r != nil && r.verified
}

// Promote moves a verified entry into the shared scope, where Verified finds it, unless it is
// there or the shared scope holds the blob already (then it reports false). Its files are
// renamed; holders of e keep using it.
func (e *Entry) Promote() (bool, error) {
	if !e.isVerified() {
		return false, fmt.Errorf("cache: promote %s: not verified", e.dgst)
	}
	c := e.cache
	c.mu.Lock()
	defer c.mu.Unlock()
	shared := Key{Digest: e.dgst}
	r := c.records[e.key]
	if e.key.Scope == "" || c.records[shared] != nil || r == nil || r.entry != e {
		return false, nil
	}
	oldBM, oldData := c.paths(e.key)
	newBM, newData := c.paths(shared)
	// Data first: a bitmap without its data is discarded at the next start, never trusted.
	if err := os.Rename(oldData, newData); err != nil {
		return false, fmt.Errorf("cache: promote %s: %w", e.key, err)
	}
	if err := os.Rename(oldBM, newBM); err != nil {
		_ = os.Rename(newData, oldData)
		return false, fmt.Errorf("cache: promote %s: %w", e.key, err)
	}
	delete(c.records, e.key)
	r.key, e.key = shared, shared
	c.records[shared] = r
	r.verified = true
	return true, nil
}

// Release drops one hold on e. The last release makes the entry durable, closes its files and
// lets it be evicted.
func (c *Cache) release(e *Entry) error {
	c.mu.Lock()
	r := c.records[e.key]
	if r == nil || r.entry != e || r.refs == 0 {
		c.mu.Unlock()
		return fmt.Errorf("cache: release %s: not held", e.key)
	}
	r.refs--
	r.lastUse = time.Now()
	if r.refs > 0 {
		c.mu.Unlock()
		return nil
	}
	r.entry = nil
	r.dirty = false
	key := e.key
	c.mu.Unlock()

	err := e.sync()
	bmPath, _ := c.paths(key)
	now := time.Now()
	_ = os.Chtimes(bmPath, now, now) // LRU order across restarts
	e.closeFiles()
	c.mu.Lock()
	c.evictLocked()
	c.mu.Unlock()
	return err
}

// grew accounts n more filled bytes for e and evicts if the cache is over capacity.
func (c *Cache) grew(e *Entry, n int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if r := c.records[e.key]; r != nil {
		r.filled += n
		r.dirty = true
		c.usage += n
	}
	c.evictLocked()
	if c.closed {
		return // Release syncs what is left
	}
	select {
	case c.syncKick <- struct{}{}:
	default:
	}
}

// evictLocked removes unheld blobs, least recently used first, until usage fits capacity.
func (c *Cache) evictLocked() {
	if c.opts.Capacity <= 0 || c.usage <= c.opts.Capacity {
		return
	}
	c.evictIdleLocked(func(int) bool { return c.usage > c.opts.Capacity })
}

// freeSpace evicts the least recently used blob that no one holds, for a write that found
// the cache's file system full (ENOSPC); it reports whether it evicted one. Meanwhile the
// fillers hand fetched bytes to readers from memory, so a full disk costs refetches, not
// failed reads.
func (c *Cache) freeSpace() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.evictIdleLocked(func(evicted int) bool { return evicted == 0 }) == 0 {
		return false
	}
	c.log.Info("cache: evicted a blob: the cache's file system is full")
	return true
}

// evictIdleLocked removes unheld blobs, least recently used first, while more(evicted so
// far) holds; it returns how many it removed.
func (c *Cache) evictIdleLocked(more func(evicted int) bool) (evicted int) {
	var idle []*record
	for _, r := range c.records {
		if r.refs == 0 {
			idle = append(idle, r)
		}
	}
	slices.SortFunc(idle, func(a, b *record) int { return a.lastUse.Compare(b.lastUse) })
	for _, r := range idle {
		if !more(evicted) {
			return evicted
		}
		bmPath, dataPath := c.paths(r.key)
		// Bitmap first: without it the data file is never trusted.
		if err := os.Remove(bmPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			c.log.Warn("cache: evict", "entry", r.key.String(), "err", err)
			continue
		}
		_ = os.Remove(dataPath)
		c.usage -= r.filled
		delete(c.records, r.key)
		evicted++
		c.log.Debug("cache: evicted", "entry", r.key.String(), "bytes", r.filled)
	}
	return evicted
}

// syncLoop makes written units durable in batches: one fdatasync per entry per SyncDelay.
func (c *Cache) syncLoop() {
	defer close(c.syncDone)
	for {
		select {
		case <-c.syncKick:
		case <-c.stop:
			return
		}
		t := time.NewTimer(c.opts.SyncDelay)
		select {
		case <-t.C:
		case <-c.stop:
			t.Stop()
		}
		c.syncDirty()
	}
}

func (c *Cache) syncDirty() {
	c.mu.Lock()
	var dirty []*Entry
	for _, r := range c.records {
		if r.dirty && r.entry != nil {
			r.dirty = false
			dirty = append(dirty, r.entry)
			r.entry.pin()
		}
	}
	c.mu.Unlock()
	for _, e := range dirty {
		if err := e.sync(); err != nil {
			c.log.Warn("cache: sync", "digest", e.dgst, "err", err)
		}
		e.unpin()
	}
}

// Close makes held entries' written units durable and stops background syncing. Held entries
// stay usable until released.
func (c *Cache) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	close(c.stop)
	<-c.syncDone
	c.syncDirty()
	return nil
}
