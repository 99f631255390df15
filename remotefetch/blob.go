package remotefetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/obdproject/obd/remotefetch/cache"
)

// Blob is one registry blob opened for random access: an io.ReaderAt over the cache, which
// fetches missing fill units on demand. It is safe for concurrent use.
type Blob struct {
	f      *Fetcher
	ref    string
	dgst   digest.Digest
	size   int64
	entry  *cache.Entry
	remote *remote
	log    *slog.Logger
	stats  counters

	ctx    context.Context // lives until Close; fetches run under it
	cancel context.CancelFunc
	wg     sync.WaitGroup // fetch, verify and background goroutines

	refs int // Opens not yet Closed; guarded by Fetcher.mu

	mu       sync.Mutex
	inflight map[int]*unitCall // units being fetched
	ranges   []*rangeCall      // FillRange calls in flight
	closed   bool

	lastErr    atomic.Pointer[error] // most recent fetch failure, for deadline errors
	poisoned   atomic.Pointer[error] // set when digest verification failed
	foreground atomic.Int64          // ReadAt calls in progress; background fill waits for zero
	seqEnd     atomic.Int64          // end of the previous read, for sequential readahead
	raStart    int                   // first unit of the last readahead window issued; guarded by mu
	raEnd      int                   // first unit past the issued readahead; guarded by mu
	raWindow   int                   // current readahead window in units, grown by sequential reads; guarded by mu
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

func (b *Blob) read(p []byte, off int64, quiet bool) (int, error) {
	if n, ok, err := b.readCached(p, off, quiet); ok {
		return n, err
	}
	ctx, cancel := context.WithTimeout(b.ctx, b.f.opts.ReadTimeout)
	defer cancel()
	return b.readAt(ctx, p, off, quiet)
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

// readCached serves a read whose units are all cached without setting up a deadline; ok is
// false when the read needs the full path. A quiet read is not traced and starts no
// readahead.
func (b *Blob) readCached(p []byte, off int64, quiet bool) (n int, ok bool, err error) {
	end := off + int64(len(p))
	if off < 0 || len(p) == 0 || end > b.size || b.ctx.Err() != nil || b.poisoned.Load() != nil {
		return 0, false, nil
	}
	if !b.entry.HasRange(off, end) {
		return 0, false, nil
	}
	if !quiet {
		b.f.recordTrace(b, off, end-off)
		if b.seqEnd.Swap(end) == off && off > 0 {
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
	sequential := false
	if !quiet {
		b.f.recordTrace(b, off, end-off)
		sequential = b.seqEnd.Swap(end) == off && off > 0
		if !sequential {
			b.resetReadahead()
		}
	}
	dst := p[:end-off]
	missed, copied, err := b.fetchInto(ctx, off, dst, sequential)
	if missed {
		b.stats.miss()
	} else {
		b.stats.hit()
	}
	if err != nil {
		b.stats.fail()
		return 0, err
	}
	if err := b.readFile(dst, off, copied); err != nil {
		b.stats.fail()
		return 0, err
	}
	if end-off < int64(len(p)) {
		return len(dst), io.EOF
	}
	return len(dst), nil
}

// readFile reads from the cache file the units of dst (at off) that fetchInto did not copy
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

// ensure makes every unit of [off, end) stored in the cache file, fetching the missing ones
// (a reader that takes the bytes of units still arriving uses fetchInto instead).
func (b *Blob) ensure(ctx context.Context, off, end int64) error {
	_, _, err := b.fetch(ctx, off, end, nil, false)
	return err
}

// fetchInto makes the bytes of dst (at off) readable, fetching missing units: bytes of a unit
// still arriving count as soon as they have arrived (a reader need not wait for the rest of the
// unit), and those still in memory are copied into dst at once; copied says for which units of
// the range (the i-th from off's unit). The rest is in the cache file.
func (b *Blob) fetchInto(ctx context.Context, off int64, dst []byte, readahead bool) (missed bool, copied []bool, err error) {
	return b.fetch(ctx, off, off+int64(len(dst)), dst, readahead)
}

// fetch is ensure (dst nil) and fetchInto.
func (b *Blob) fetch(ctx context.Context, off, end int64, dst []byte, readahead bool) (missed bool, copied []bool, err error) {
	unit := b.entry.Layout().Unit
	first, last := int(off/unit), int((end-1)/unit)
	if readahead {
		b.readahead(off, end)
	}
	if ok, inMem, waited := b.fromRange(ctx, off, end, dst); ok {
		if inMem {
			copied = make([]bool, last-first+1)
			for i := range copied {
				copied[i] = true
			}
		}
		return waited, copied, nil
	}
	for {
		if b.entry.HasRange(off, end) {
			return missed, copied, nil // a range fill stored it meanwhile, or it was there
		}
		if perr := b.poisoned.Load(); perr != nil {
			return missed, copied, *perr
		}
		waits, err := b.claimAndFetch(first, last)
		if errors.Is(err, ErrDigestMismatch) {
			return missed, copied, err
		}
		if err != nil {
			return missed, copied, fmt.Errorf("remotefetch: blob %s range %d-%d: %w", b.dgst, off, end, err)
		}
		if len(waits) == 0 {
			return missed, copied, nil
		}
		readable := true
		for _, c := range waits {
			var ok bool
			var fetchErr error
			if dst == nil {
				missed = true
				ok, fetchErr = c.waitStored(ctx)
			} else {
				// Bytes that had all arrived when asked for are a hit, though not yet stored.
				start, n := b.entry.Layout().UnitRange(c.unit)
				lo, hi := max(off, start), min(end, start+n)
				var inMem, waited bool
				ok, inMem, waited, fetchErr = c.read(ctx, dst[lo-off:hi-off], lo-start)
				missed = missed || waited
				if inMem {
					if copied == nil {
						copied = make([]bool, last-first+1)
					}
					copied[c.unit-first] = true
				}
			}
			if fetchErr != nil && isPermanent(fetchErr) {
				return missed, copied, fmt.Errorf("remotefetch: blob %s range %d-%d: %w", b.dgst, off, end, fetchErr)
			}
			if ctx.Err() != nil {
				return missed, copied, b.deadlineError(ctx, off, end)
			}
			readable = readable && ok
		}
		if dst != nil && readable {
			return missed, copied, nil
		}
		if ctx.Err() != nil {
			return missed, copied, b.deadlineError(ctx, off, end)
		}
	}
}

// readahead keeps a window of units past the read's last unit in flight, for a sequential
// read of [off, end). The window starts at two units and doubles with every sequential read up
// to MaxRequestSize, as the kernel's readahead does: a file read through once (a library at
// container start) costs a little more than its own bytes, while a long sequential scan
// soon fetches in MaxRequestSize requests. It issues the next window only when the reader
// is within half a window of the end of the previous one, so requests stay window-sized.
//
// Like the kernel's, it must be earned: the read is in the last window readahead issued, or
// it needs units that no one has fetched or is fetching. A reader going through bytes that
// arrived by other means (a trace replay, bdd's metadata walk) is following what those
// already chose to fetch, and reading past it on speculation only takes link time from them
// (bench/FINDINGS.md: megabytes of a base layer's inode tables during a replayed start).
func (b *Blob) readahead(off, end int64) {
	unit := b.entry.Layout().Unit
	last := int((end - 1) / unit)
	maxWindow := int(max(1, b.f.opts.MaxRequestSize/b.entry.Layout().Unit))
	b.mu.Lock()
	b.raWindow = min(max(2, 2*b.raWindow), maxWindow)
	window := b.raWindow
	from := max(b.raEnd, last+1)
	if from-last > window/2 || from >= b.entry.Layout().Units() || !b.readaheadEarnedLocked(off, end) {
		b.mu.Unlock()
		return
	}
	to := min(from+window, b.entry.Layout().Units())
	b.raStart, b.raEnd = from, to
	b.mu.Unlock()
	_, _ = b.claimAndFetch(from, to-1)
}

// readaheadEarnedLocked reports whether a sequential read of [off, end) earns readahead (see
// readahead). b.mu is held.
func (b *Blob) readaheadEarnedLocked(off, end int64) bool {
	unit := b.entry.Layout().Unit
	first, last := int(off/unit), int((end-1)/unit)
	if last >= b.raStart && first < b.raEnd {
		return true
	}
	for u := first; u <= last; u++ {
		uoff, n := b.entry.Layout().UnitRange(u)
		lo, hi := max(off, uoff), min(end, uoff+n)
		if b.inflight[u] == nil && !b.entry.HasRange(lo, hi) && b.rangeCoveringLocked(lo, hi) == nil {
			return true
		}
	}
	return false
}

// resetReadahead shrinks the readahead window back after a read that is not sequential.
func (b *Blob) resetReadahead() {
	b.mu.Lock()
	b.raWindow = 0
	b.mu.Unlock()
}

func (b *Blob) deadlineError(ctx context.Context, off, end int64) error {
	cause := errors.New("no response")
	if last := b.lastErr.Load(); last != nil {
		cause = *last
	}
	if b.ctx.Err() != nil {
		return fmt.Errorf("remotefetch: blob %s range %d-%d: %w", b.dgst, off, end, ErrClosed)
	}
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("remotefetch: blob %s range %d-%d: %w (last cause: %v)", b.dgst, off, end, ctx.Err(), cause)
	}
	return fmt.Errorf("remotefetch: blob %s range %d-%d: %w after %v (last cause: %v)", b.dgst, off, end, ErrDeadline, b.f.opts.ReadTimeout, cause)
}

// claimAndFetch claims the missing, not yet in-flight units of [first, last], starts fetching
// them in runs of at most MaxRequestSize, and returns the calls of every missing unit in the
// range (claimed here or by someone else) to wait on.
func (b *Blob) claimAndFetch(first, last int) ([]*unitCall, error) {
	var waits []*unitCall
	var runStart = -1
	var run []*unitCall
	maxUnits := int(max(1, b.f.opts.MaxRequestSize/b.entry.Layout().Unit))
	flush := func() {
		if runStart >= 0 {
			b.startFetch(runStart, run)
			runStart, run = -1, nil
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, ErrClosed
	}
	if perr := b.poisoned.Load(); perr != nil {
		return nil, *perr // a corrupt blob is not fetched again until reopened
	}
	for _, u := range b.entry.Missing(first, last) {
		if runStart >= 0 && u != runStart+len(run) {
			flush() // a present unit ends the run
		}
		if c := b.inflight[u]; c != nil {
			flush()
			waits = append(waits, c)
			continue
		}
		c := newUnitCall(u)
		b.inflight[u] = c
		waits = append(waits, c)
		if runStart < 0 {
			runStart = u
		}
		run = append(run, c)
		if len(run) == maxUnits {
			flush()
		}
	}
	flush()
	return waits, nil
}

// startFetch fetches the units from first on, one call each, in a goroutine that lives at
// most ReadTimeout (and not past Close). b.mu is held.
func (b *Blob) startFetch(first int, calls []*unitCall) {
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		ctx, cancel := context.WithTimeout(b.ctx, b.f.opts.ReadTimeout)
		defer cancel()
		b.fetchRun(ctx, first, calls)
	}()
}

// fetchRun fetches consecutive units with one range request, storing each unit as soon as it
// has arrived. A failed or short response is retried from the first unit not yet stored,
// with backoff, until ctx ends or the error is permanent.
func (b *Blob) fetchRun(ctx context.Context, first int, calls []*unitCall) {
	next := 0 // index into calls of the first unit not yet stored
	var lastErr error
	defer func() {
		if next < len(calls) {
			if lastErr == nil {
				lastErr = ctx.Err()
			}
			b.finish(first+next, calls[next:], lastErr)
		}
	}()
	for attempt := 0; next < len(calls); attempt++ {
		if attempt > 0 {
			if !b.backoff(ctx, attempt) {
				return
			}
			b.stats.retry()
		}
		stored, err := b.fetchOnce(ctx, first+next, calls[next:])
		b.finish(first+next, calls[next:next+stored], nil)
		next += stored
		if err == nil {
			continue
		}
		if ctx.Err() != nil && lastErr != nil {
			return // our own deadline cut the attempt short: the previous cause is the real one
		}
		lastErr = err
		b.lastErr.Store(&err)
		b.log.Debug("remotefetch: fetch failed", "error", err)
		if isPermanent(err) {
			return
		}
		if stored > 0 {
			attempt = 0 // progress: retry at once
		}
	}
}

// withCause replaces a bare "context canceled" by the watchdog's reason.
func withCause(ctx context.Context, err error) error {
	cause := context.Cause(ctx)
	if cause != nil && !errors.Is(cause, context.Canceled) && !errors.Is(cause, context.DeadlineExceeded) &&
		!strings.Contains(err.Error(), cause.Error()) {
		return fmt.Errorf("%w (%v)", err, cause)
	}
	return err
}

// progressReader calls onProgress whenever bytes arrive.
type progressReader struct {
	r          io.Reader
	onProgress func()
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.onProgress()
	}
	return n, err
}

// finish completes the calls of units first.. with err and forgets them.
func (b *Blob) finish(first int, calls []*unitCall, err error) {
	if len(calls) == 0 {
		return
	}
	b.mu.Lock()
	for i, c := range calls {
		c.err = err
		delete(b.inflight, first+i)
		close(c.done)
	}
	b.mu.Unlock()
}

// backoff sleeps before retry number attempt: exponential from 50 ms to 2 s (at most an
// eighth of ReadTimeout, so a read gets several tries) with jitter, longer if the server asked
// (Retry-After, at most 5 s). It returns false when ctx ends first.
func (b *Blob) backoff(ctx context.Context, attempt int) bool {
	d := min(50*time.Millisecond<<min(attempt-1, 6), 2*time.Second, max(b.f.opts.ReadTimeout/8, 10*time.Millisecond))
	d = d/2 + rand.N(d/2+1)
	if last := b.lastErr.Load(); last != nil {
		var se *statusError
		if errors.As(*last, &se) && se.retryAfter > 0 {
			d = min(se.retryAfter, 5*time.Second)
		}
	}
	return sleepCtx(ctx, d)
}

// startVerify checks the complete blob against its digest in the background, after
// foreground reads are done, so that hashing does not slow them down.
func (b *Blob) startVerify() {
	b.wg.Go(func() {
		for b.foreground.Load() > 0 {
			if !sleepCtx(b.ctx, foregroundPoll) {
				return // closed: the next Open verifies
			}
		}
		if err := b.verify(); err != nil {
			b.stats.fail()
		}
	})
}

func (b *Blob) verify() error {
	err := b.entry.Verify()
	if errors.Is(err, ErrDigestMismatch) {
		b.log.Error("remotefetch: blob does not match its digest; cached copy discarded", "ref", b.ref)
		perr := fmt.Errorf("remotefetch: blob %s from %s: %w", b.dgst, b.ref, err)
		b.poisoned.Store(&perr)
		return perr
	}
	return err
}

// Fill fetches every missing unit of [off, off+n) into the cache without copying it out.
func (b *Blob) Fill(ctx context.Context, off, n int64) error {
	if off < 0 || n < 0 || off+n > b.size {
		return fmt.Errorf("remotefetch: blob %s: fill range %d+%d outside size %d", b.dgst, off, n, b.size)
	}
	if n == 0 {
		return nil
	}
	err := b.ensure(ctx, off, off+n)
	return err
}

// Verify downloads whatever is missing and checks the blob against its digest. It returns an
// error wrapping ErrDigestMismatch if the blob is corrupt.
func (b *Blob) Verify(ctx context.Context) error {
	if err := b.Fill(ctx, 0, b.size); err != nil {
		return err
	}
	if err := b.verify(); err != nil {
		return err
	}
	if perr := b.poisoned.Load(); perr != nil {
		return *perr
	}
	return nil
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

func (b *Blob) shutdown() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	b.cancel()
	b.wg.Wait()
	return b.entry.Release()
}
