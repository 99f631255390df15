package remotefetch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/obdproject/obd/remotefetch/cache"
)

// source is a Blob's filler as its read front sees it: it makes ranges of the blob present in
// the cache entry, fetching from the registry what is missing. The front decides what to read
// and when to read ahead; the source decides how to fetch.
type source interface {
	// fetch makes the bytes of [off, end) readable, fetching the units that are neither
	// present nor in flight. With dst nil, it returns once every unit of the range is
	// present. With dst (end-off bytes long), the bytes of a unit still arriving count as
	// soon as they have arrived: those still in memory are copied into dst, and copied says
	// for which units of the range (the i-th from off's unit; nil: none); the rest are in
	// the cache file. missed reports that it waited for bytes to arrive. When ctx ends first,
	// the error names the range and the last cause of failure and wraps ErrDeadline (or
	// ErrClosed once the source closed).
	fetch(ctx context.Context, off, end int64, dst []byte) (missed bool, copied []bool, err error)
	// fillRange makes [off, end) present, as Blob.FillRange describes.
	fillRange(ctx context.Context, off, end int64) error
	// fetchAhead starts fetching the units of [first, last] that are neither present nor in
	// flight, and does not wait for them.
	fetchAhead(first, last int)
	// claimed reports whether every byte of [off, end) is present or being fetched.
	claimed(off, end int64) bool
	// failed is the error every read fails with once the blob failed digest verification
	// (it wraps ErrDigestMismatch), else nil.
	failed() error
	// verify checks the complete blob against its digest unless that was done; a mismatch
	// discards the cached copy and makes failed return the error.
	verify() error
	// close stops every fetch, background fill and verification and waits for them to end;
	// fetches, reads and fills end with ErrClosed. It reports false if the source was closed
	// already.
	close() bool
}

// fillerConfig is what a filler is made of.
type fillerConfig struct {
	opts    *Options // the Fetcher's, with defaults applied
	ref     string
	dgst    digest.Digest
	entry   *cache.Entry
	remote  *remote
	table   *tableLoader // nil: the blob has no range table, and is verified only as a whole
	stats   *counters
	log     *slog.Logger
	batches *sync.Pool // *[]byte buffers a stream batch long
	latency prometheus.Observer
	// busy reports whether a foreground read is in progress; background fill and
	// verification wait while it does.
	busy func() bool
}

// filler is the source of one Blob: fill-unit claims with one fetch per unit, merged runs of
// misses streamed through batches (stream.go), exact range fills (rangefetch.go), retries with
// backoff (retry.go), background fill (background.go) and digest verification.
type filler struct {
	fillerConfig
	ctx    context.Context // lives until close; fetches run under it
	cancel context.CancelFunc
	wg     sync.WaitGroup // fetch, verify and background goroutines

	mu       sync.Mutex
	inflight map[int]*unitCall // units being fetched
	ranges   []*rangeCall      // range fills in flight
	closed   bool

	lastErr  atomic.Pointer[error] // most recent fetch failure, for deadline errors
	poisoned atomic.Pointer[error] // set when digest verification failed

	// verifying is held exclusively by a digest check until a mismatch has poisoned the
	// filler, and shared by commits: a fill that began before the check cannot store its
	// bytes between the check's discard and the poisoning.
	verifying sync.RWMutex
}

// newFiller returns a filler whose work lives until close, which calls cancel (ctx's).
func newFiller(ctx context.Context, cancel context.CancelFunc, cfg fillerConfig) *filler {
	return &filler{fillerConfig: cfg, ctx: ctx, cancel: cancel, inflight: map[int]*unitCall{}}
}

func (f *filler) fetch(ctx context.Context, off, end int64, dst []byte) (missed bool, copied []bool, err error) {
	// A fill begun before the blob failed its check may still store units; they serve nothing.
	if err := f.failed(); err != nil {
		return false, nil, err
	}
	if ok, inMem, waited := f.fromRange(ctx, off, end, dst); ok {
		if inMem {
			copied = allUnits(f.entry.Layout(), off, end)
		}
		return waited, copied, nil
	}
	w := &unitWait{lay: f.entry.Layout(), off: off, end: end, dst: dst}
	for {
		if err := f.failed(); err != nil {
			return w.missed, w.copied, err
		}
		if f.entry.HasRange(off, end) {
			return w.missed, w.copied, nil // a range fill stored it meanwhile, or it was there
		}
		waits, err := f.claim(w.lay.UnitOf(off), w.lay.UnitOf(end-1))
		if errors.Is(err, ErrDigestMismatch) {
			return w.missed, w.copied, err
		}
		if err != nil {
			return w.missed, w.copied, fmt.Errorf("remotefetch: blob %s range %d-%d: %w", f.dgst, off, end, err)
		}
		if len(waits) == 0 {
			return w.missed, w.copied, nil
		}
		readable, err := f.await(ctx, w, waits)
		if err != nil || (dst != nil && readable) {
			return w.missed, w.copied, err
		}
		if ctx.Err() != nil {
			return w.missed, w.copied, f.deadlineError(ctx, off, end)
		}
	}
}

// allUnits is a copied list (see source.fetch) that names every unit of [off, end).
func allUnits(lay cache.Layout, off, end int64) []bool {
	copied := make([]bool, lay.UnitOf(end-1)-lay.UnitOf(off)+1)
	for i := range copied {
		copied[i] = true
	}
	return copied
}

// unitWait is one fetch's wait for the units of [off, end): where their bytes go (dst, nil
// to wait until they are stored) and what it has found.
type unitWait struct {
	lay      cache.Layout
	off, end int64
	dst      []byte
	missed   bool   // some bytes had not arrived when asked for
	copied   []bool // as for source.fetch
}

// await waits for the calls of units of the range. readable reports that each one's bytes
// are readable; err is a permanent failure or the end of ctx.
func (f *filler) await(ctx context.Context, w *unitWait, waits []*unitCall) (readable bool, err error) {
	readable = true
	for _, c := range waits {
		ok, fetchErr := w.wait(ctx, c)
		if fetchErr != nil && isPermanent(fetchErr) {
			return false, fmt.Errorf("remotefetch: blob %s range %d-%d: %w", f.dgst, w.off, w.end, fetchErr)
		}
		if ctx.Err() != nil {
			return false, f.deadlineError(ctx, w.off, w.end)
		}
		readable = readable && ok
	}
	return readable, nil
}

// wait waits for c's unit: until it is stored (dst nil), or until the unit's bytes of the
// range have arrived, taking them from memory if they are still there. It reports whether
// they are readable, else the fetch's error (nil when ctx ended).
func (w *unitWait) wait(ctx context.Context, c *unitCall) (ok bool, fetchErr error) {
	if w.dst == nil {
		w.missed = true
		return c.waitStored(ctx)
	}
	// Bytes that had all arrived when asked for are a hit, though not yet stored.
	start, n := w.lay.UnitRange(c.unit)
	lo, hi := max(w.off, start), min(w.end, start+n)
	ok, inMem, waited, fetchErr := c.read(ctx, w.dst[lo-w.off:hi-w.off], lo-start)
	w.missed = w.missed || waited
	if inMem {
		first := w.lay.UnitOf(w.off)
		if w.copied == nil {
			w.copied = make([]bool, w.lay.UnitOf(w.end-1)-first+1)
		}
		w.copied[c.unit-first] = true
	}
	return ok, fetchErr
}

func (f *filler) fetchAhead(first, last int) { _, _ = f.claim(first, last) }

func (f *filler) claimed(off, end int64) bool {
	lay := f.entry.Layout()
	f.mu.Lock()
	defer f.mu.Unlock()
	for u := lay.UnitOf(off); u <= lay.UnitOf(end-1); u++ {
		uoff, n := lay.UnitRange(u)
		lo, hi := max(off, uoff), min(end, uoff+n)
		if f.inflight[u] == nil && !f.entry.HasRange(lo, hi) && f.rangeCoveringLocked(lo, hi) == nil {
			return false
		}
	}
	return true
}

// claim claims the missing, not yet in-flight units of [first, last], starts fetching them in
// runs of at most MaxRequestSize, and returns the calls of every missing unit in the range
// (claimed here or by someone else) to wait on.
func (f *filler) claim(first, last int) ([]*unitCall, error) {
	var waits []*unitCall
	var runStart = -1
	var run []*unitCall
	maxUnits := int(max(1, f.opts.MaxRequestSize/f.entry.Layout().Unit))
	flush := func() {
		if runStart >= 0 {
			f.startFetch(runStart, run)
			runStart, run = -1, nil
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, ErrClosed
	}
	if err := f.failed(); err != nil {
		return nil, err // a corrupt blob is not fetched again until reopened
	}
	for _, u := range f.entry.Missing(first, last) {
		if runStart >= 0 && u != runStart+len(run) {
			flush() // a present unit ends the run
		}
		if c := f.inflight[u]; c != nil {
			flush()
			waits = append(waits, c)
			continue
		}
		c := newUnitCall(u)
		f.inflight[u] = c
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

func (f *filler) failed() error {
	if perr := f.poisoned.Load(); perr != nil {
		return *perr
	}
	return nil
}

// deadlineError is the error of a fetch of [off, end) whose ctx ended.
func (f *filler) deadlineError(ctx context.Context, off, end int64) error {
	cause := errors.New("no response")
	if last := f.lastErr.Load(); last != nil {
		cause = *last
	}
	if f.ctx.Err() != nil {
		return fmt.Errorf("remotefetch: blob %s range %d-%d: %w", f.dgst, off, end, ErrClosed)
	}
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("remotefetch: blob %s range %d-%d: %w (last cause: %v)", f.dgst, off, end, ctx.Err(), cause)
	}
	return fmt.Errorf("remotefetch: blob %s range %d-%d: %w after %v (last cause: %v)", f.dgst, off, end, ErrDeadline, f.opts.ReadTimeout, cause)
}

// startVerify checks the complete blob against its digest in the background, after
// foreground reads are done, so that hashing does not slow them down.
func (f *filler) startVerify() {
	f.wg.Go(func() {
		for f.busy() {
			if !sleepCtx(f.ctx, foregroundPoll) {
				return // closed: the next Open verifies
			}
		}
		if err := f.verify(); err != nil {
			f.stats.fail()
			return
		}
		f.seed()
	})
}

// verify checks the complete blob against its digest and, once it matches, moves its cache
// entry to the shared scope (verify.go): bytes that match the digest may serve any image.
func (f *filler) verify() error {
	f.verifying.Lock()
	err := f.entry.Verify()
	if errors.Is(err, ErrDigestMismatch) {
		perr := fmt.Errorf("remotefetch: blob %s from %s: %w", f.dgst, f.ref, err)
		f.poisoned.Store(&perr)
		f.verifying.Unlock()
		f.log.Error("remotefetch: blob does not match its digest; cached copy discarded", "ref", f.ref)
		return perr
	}
	f.verifying.Unlock()
	if err != nil {
		return err
	}
	if ok, err := f.entry.Promote(); err != nil {
		f.log.Warn("remotefetch: verified blob stays in its scope", "err", err)
	} else if ok {
		f.log.Debug("remotefetch: verified blob shared")
	}
	return nil
}

func (f *filler) close() bool {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return false
	}
	f.closed = true
	f.mu.Unlock()
	f.cancel()
	f.wg.Wait()
	return true
}
