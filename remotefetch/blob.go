package remotefetch

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/opencontainers/go-digest"

	"github.com/obdproject/obd/remotefetch/cache"
)

// Blob is one registry blob opened for random access: an io.ReaderAt over the cache, which
// fetches missing fill units on demand. It is safe for concurrent use.
//
// A Blob is its read front, here and in readahead.go: it serves reads from the cache entry,
// records them in a running trace, and decides when to read ahead. What the cache lacks it
// asks of its filler (a source), which fetches from the registry and commits to the entry.
type Blob struct {
	f     *Fetcher
	ref   string
	bkey  blobKey // how it is shared: its cache entry's key (verify.go) and repository
	dgst  digest.Digest
	size  int64
	entry *cache.Entry
	stats *counters
	fill  source
	table *tableLoader // the range table's pin; nil for a blob without one
	// checked: opened WithCallerChecks, whose reader checks every range it reads.
	checked bool

	ctx context.Context // lives until the filler closes; reads end with it

	refs int // Opens not yet Closed; guarded by Fetcher.mu

	foreground atomic.Int64 // reads that missed, in progress; background work waits for zero
	ra         readahead
}

// newBlob opens the blob key.key.Digest of size bytes, ref's repository, over the cache entry and
// the registry through rem, checking what it fetches against the range table that table
// loads (nil: none). It starts loading the table, verifies a blob that was completed before a
// restart, and starts background fill unless the Fetcher disables it.
func newBlob(f *Fetcher, ref string, key blobKey, size int64, entry *cache.Entry, rem *remote, table *tableLoader) *Blob {
	ctx, cancel := context.WithCancel(context.Background())
	dgst := key.key.Digest
	b := &Blob{f: f, ref: ref, bkey: key, dgst: dgst, size: size, entry: entry, stats: &counters{m: f.metrics},
		ctx: ctx, refs: 1, table: table}
	fl := newFiller(ctx, cancel, fillerConfig{
		opts: &f.opts, ref: ref, dgst: dgst, entry: entry, remote: rem, table: table, stats: b.stats,
		log: f.log.With("digest", dgst.String()), batches: &f.batches,
		latency: f.metrics.fetchLatency, busy: func() bool { return b.foreground.Load() > 0 },
	})
	b.fill = fl
	if table != nil && !entry.HasRange(0, size) {
		table.start(fl)
	}
	if entry.NeedsVerify() {
		fl.startVerify() // completed before a crash or restart
	}
	if f.opts.BackgroundDelay > 0 {
		fl.startBackground()
	}
	return b
}

// Size is the blob's size in bytes.
func (b *Blob) Size() int64 { return b.size }

// Digest is the blob's digest.
func (b *Blob) Digest() digest.Digest { return b.dgst }

// Stats returns the blob's counters since Open.
func (b *Blob) Stats() Stats { return b.stats.stats() }

// ReadAt reads len(p) bytes at off (fewer, with io.EOF, at the end of the blob). Missing units
// are fetched, with retries, until Options.ReadTimeout passes; then it fails with an error
// wrapping ErrDeadline that names the blob, the range and the last cause. It never returns
// bytes that did not arrive as the requested range.
func (b *Blob) ReadAt(p []byte, off int64) (int, error) {
	return b.read(p, off, false)
}

// ReadAtContext is ReadAt with a caller's context, which may end the read sooner.
func (b *Blob) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, b.f.opts.ReadTimeout)
	defer cancel()
	stop := context.AfterFunc(b.ctx, cancel)
	defer stop()
	return b.readAt(ctx, p, off, false)
}

// Prefetcher returns a reader of b for prefetchers that read what a workload is about to
// read (such as the ext4 metadata walk): its reads fetch what they miss like ReadAt, but
// they neither start readahead nor enter a trace, and they leave the sequential-read
// detection of the workload's own reads alone. Its reads end when b closes.
func (b *Blob) Prefetcher() io.ReaderAt { return quietReader{b} }

type quietReader struct{ b *Blob }

func (q quietReader) ReadAt(p []byte, off int64) (int, error) { return q.b.read(p, off, true) }

// read is ReadAt under the Blob's own deadline; quiet is as for Prefetcher.
func (b *Blob) read(p []byte, off int64, quiet bool) (int, error) {
	if n, ok, err := b.readCached(p, off, quiet); ok {
		return n, err
	}
	ctx, cancel := context.WithTimeout(b.ctx, b.f.opts.ReadTimeout)
	defer cancel()
	return b.readAt(ctx, p, off, quiet)
}

// readCached serves a read whose bytes are all present without setting up a deadline; ok is
// false when the read needs the full path. A quiet read is not traced and starts no
// readahead.
func (b *Blob) readCached(p []byte, off int64, quiet bool) (n int, ok bool, err error) {
	end := off + int64(len(p))
	if off < 0 || len(p) == 0 || end > b.size || b.ctx.Err() != nil || b.fill.failed() != nil {
		return 0, false, nil
	}
	if !b.entry.HasRange(off, end) {
		return 0, false, nil
	}
	if !quiet {
		b.f.recordTrace(b, off, end-off)
		if b.ra.sequential(off, end) {
			b.readahead(off, end)
		}
	}
	b.stats.hit()
	n, err = b.entry.ReadAt(p, off)
	if err != nil {
		b.stats.fail()
		return n, true, fmt.Errorf("remotefetch: blob %s: read cache at %d: %w", b.dgst, off, err)
	}
	return n, true, nil
}

// readAt is a read that may miss: the filler makes its bytes readable (or fails by ctx), then
// they are copied from memory or read from the cache file.
func (b *Blob) readAt(ctx context.Context, p []byte, off int64, quiet bool) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("remotefetch: blob %s: negative offset %d", b.dgst, off)
	}
	if off >= b.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	end := min(off+int64(len(p)), b.size)
	b.foreground.Add(1)
	defer b.foreground.Add(-1)
	if !quiet {
		b.f.recordTrace(b, off, end-off)
		if b.ra.sequential(off, end) {
			b.readahead(off, end)
		} else {
			b.ra.reset()
		}
	}
	dst := p[:end-off]
	if err := b.fetchAndRead(ctx, dst, off); err != nil {
		b.stats.fail()
		return 0, err
	}
	if end-off < int64(len(p)) {
		return len(dst), io.EOF
	}
	return len(dst), nil
}

// fetchAndRead fills dst with the bytes at off, counting the read as a hit or a miss.
func (b *Blob) fetchAndRead(ctx context.Context, dst []byte, off int64) error {
	missed, copied, err := b.fill.fetch(ctx, off, off+int64(len(dst)), dst)
	if missed {
		b.stats.miss()
	} else {
		b.stats.hit()
	}
	if err != nil {
		return err
	}
	return b.readFile(dst, off, copied)
}

// readFile reads from the cache file the units of dst (at off) that the filler did not copy
// (copied[i] for the i-th unit of the range; nil = none), one read per run of such units.
func (b *Blob) readFile(dst []byte, off int64, copied []bool) error {
	unit := b.entry.Layout().Unit
	first, end := off/unit, off+int64(len(dst))
	inFile := func(pos int64) bool { return copied == nil || !copied[pos/unit-first] }
	for pos := off; pos < end; {
		to := pos
		for to < end && inFile(to) {
			to = min(end, (to/unit+1)*unit)
		}
		if to > pos {
			if _, err := b.entry.ReadAt(dst[pos-off:to-off], pos); err != nil {
				return fmt.Errorf("remotefetch: blob %s: read cache at %d: %w", b.dgst, pos, err)
			}
		}
		pos = min(end, (to/unit+1)*unit) // past the copied unit at to
	}
	return nil
}

// Fill fetches every missing unit of [off, off+n) into the cache without copying it out.
func (b *Blob) Fill(ctx context.Context, off, n int64) error {
	if err := b.checkRange(off, n); err != nil || n == 0 {
		return err
	}
	_, _, err := b.fill.fetch(ctx, off, off+n, nil)
	return err
}

// FillRange makes [off, off+n) readable from the cache with one request for exactly those
// bytes (retried like any fetch). Where the range's units are being fetched already, it
// waits for them and fetches the rest as whole units instead; so it does for a range larger
// than a stream batch, whose rounding costs little and which the unit path fetches in
// bounded memory.
func (b *Blob) FillRange(ctx context.Context, off, n int64) error {
	if err := b.checkRange(off, n); err != nil || n == 0 {
		return err
	}
	return b.fill.fillRange(ctx, off, off+n)
}

// checkRange refuses a fill of [off, off+n) that is not inside the blob.
func (b *Blob) checkRange(off, n int64) error {
	if off < 0 || n < 0 || off+n > b.size {
		return fmt.Errorf("remotefetch: blob %s: fill range %d+%d outside size %d", b.dgst, off, n, b.size)
	}
	return nil
}

// Verify downloads whatever is missing and checks the blob against its digest. It returns an
// error wrapping ErrDigestMismatch if the blob is corrupt.
func (b *Blob) Verify(ctx context.Context) error {
	if err := b.Fill(ctx, 0, b.size); err != nil {
		return err
	}
	if err := b.fill.verify(); err != nil {
		return err
	}
	return b.fill.failed()
}

// Close ends one Open. The last Close stops the blob's fetches and background fill and
// releases its cache entry; reads in progress then fail with ErrClosed.
func (b *Blob) Close() error {
	last, err := b.f.release(b)
	if !last {
		return err
	}
	return b.shutdown()
}

// shutdown stops the filler and releases the cache entry, once.
func (b *Blob) shutdown() error {
	if !b.fill.close() {
		return nil
	}
	if b.table != nil {
		b.table.release()
	}
	return b.entry.Release()
}
