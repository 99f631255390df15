package remotefetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"time"
)

// startFetch fetches the units from first on, one call each, in a goroutine that lives at
// most ReadTimeout (and not past close). f.mu is held.
func (f *filler) startFetch(first int, calls []*unitCall) {
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		ctx, cancel := context.WithTimeout(f.ctx, f.opts.ReadTimeout)
		defer cancel()
		f.fetchRun(ctx, first, calls)
	}()
}

// fetchRun fetches consecutive units with one range request, storing each unit as soon as it
// has arrived. A failed or short response is retried from the first unit not yet stored,
// with backoff, until ctx ends or the error is permanent. Every call ends: stored, or failed
// with the last cause.
func (f *filler) fetchRun(ctx context.Context, first int, calls []*unitCall) {
	next := 0 // index into calls of the first unit not yet stored
	var lastErr error
	defer func() {
		if next < len(calls) {
			if lastErr == nil {
				lastErr = ctx.Err()
			}
			f.finish(first+next, calls[next:], lastErr)
		}
	}()
	mismatches := 0
	for attempt := 0; next < len(calls); attempt++ {
		if attempt > 0 {
			if !f.backoff(ctx, attempt) {
				return
			}
			f.stats.retry()
		}
		stored, err := f.fetchOnce(ctx, first+next, calls[next:])
		f.finish(first+next, calls[next:next+stored], nil)
		next += stored
		if err == nil {
			continue
		}
		if ctx.Err() != nil && lastErr != nil {
			return // our own deadline cut the attempt short: the previous cause is the real one
		}
		if stored > 0 {
			mismatches = 0
		}
		err = f.mismatchLimit(err, &mismatches)
		lastErr = err
		f.failedAttempt(err)
		if isPermanent(err) {
			return
		}
		if stored > 0 {
			attempt = 0 // progress: retry at once
		}
	}
}

// failedAttempt remembers err as the last cause of failure, for deadline errors and backoff.
func (f *filler) failedAttempt(err error) {
	f.remote.distrustPeer(err)
	f.lastErr.Store(&err)
	f.log.Debug("remotefetch: fetch failed", "err", err)
}

// finish completes the calls of units first.. with err and forgets them.
func (f *filler) finish(first int, calls []*unitCall, err error) {
	if len(calls) == 0 {
		return
	}
	f.mu.Lock()
	for i, c := range calls {
		c.err = err
		delete(f.inflight, first+i)
		close(c.done)
	}
	f.mu.Unlock()
}

// backoff sleeps before retry number attempt: exponential from 50 ms to 2 s (at most an
// eighth of ReadTimeout, so a read gets several tries) with jitter, longer if the server asked
// (Retry-After, at most 5 s). It returns false when ctx ends first.
func (f *filler) backoff(ctx context.Context, attempt int) bool {
	d := min(50*time.Millisecond<<min(attempt-1, 6), 2*time.Second, max(f.opts.ReadTimeout/8, 10*time.Millisecond))
	d = d/2 + rand.N(d/2+1)
	if last := f.lastErr.Load(); last != nil {
		var se *statusError
		if errors.As(*last, &se) && se.retryAfter > 0 {
			d = min(se.retryAfter, 5*time.Second)
		}
	}
	return sleepCtx(ctx, d)
}

// startAttempt starts a GET of [off, off+n) under ctx, which a watchdog cancels (through
// cancel) when no bytes arrive for StallTimeout. closeBody stops the watchdog and closes the
// body.
//
// For a blob with a range table, the request covers the whole chunks around [off, off+n) and
// body hands on only bytes that passed their check (verify.go); it waits for the table first.
func (f *filler) startAttempt(ctx context.Context, cancel context.CancelCauseFunc, off, n int64) (body io.Reader, closeBody func(), err error) {
	var v *rangeVerifier
	from, to := off, off+n
	if f.table != nil {
		// Until the table is in, the request goes out beside it, widened by a guess at its
		// chunks: the first reads of a layer do not wait a round trip for it.
		if v = f.table.ready(); v != nil {
			from, to = v.widen(off, off+n)
		} else {
			from, to = f.table.guessWiden(off, off+n)
		}
	}
	reset, stop := f.stallWatch(cancel)
	rc, err := f.remote.get(ctx, from, to-from)
	if err != nil {
		stop()
		return nil, nil, withCause(ctx, err)
	}
	closeBody = func() {
		stop()
		rc.Close()
	}
	body = &progressReader{r: rc, onProgress: reset}
	if f.table != nil {
		if body, err = f.verifiedBody(ctx, v, body, sourceOf(rc), from, to, off, n); err != nil {
			closeBody()
			return nil, nil, err
		}
	}
	return body, closeBody, nil
}

// stallWatch starts a watchdog that cancels an attempt (through cancel) when no bytes arrive
// for StallTimeout: reset says some did, stop ends the watch.
func (f *filler) stallWatch(cancel context.CancelCauseFunc) (reset, stop func()) {
	stall := f.opts.StallTimeout
	w := time.AfterFunc(stall, func() { cancel(fmt.Errorf("stalled: no data for %v", stall)) })
	return func() { w.Reset(stall) }, func() { w.Stop() }
}

// verifiedBody is a response body of the chunks [from, to) that hands on [off, off+n) chunk
// by chunk as each passes its check against v, or once it is loaded, the blob's table.
func (f *filler) verifiedBody(ctx context.Context, v *rangeVerifier, body io.Reader, src string, from, to, off, n int64) (io.Reader, error) {
	if v == nil {
		var err error
		if v, err = f.table.verifier(ctx, f); err != nil {
			return nil, err
		}
		if a, b := v.widen(from, to); a != from || b != to {
			return nil, fmt.Errorf("remotefetch: blob %s: bytes %d-%d are not whole chunks of its range table (%d bytes each); fetching again", f.dgst, from, to, v.tbl.Chunk())
		}
	}
	return &verifyingReader{r: body, v: v, dgst: f.dgst, from: src, pos: from, want: off, end: off + n, bufOff: -1}, nil
}

// mismatchLimit makes err permanent once fetches of one range have brought bytes that failed
// their check maxMismatches times in a row (*count, which it advances), and logs it: the
// registry keeps serving other bytes than the image pins.
func (f *filler) mismatchLimit(err error, count *int) error {
	if !errors.Is(err, ErrRangeMismatch) {
		return err
	}
	if *count++; *count >= maxMismatches && !isPermanent(err) {
		f.log.Error("remotefetch: fetched bytes keep failing their range table check; the read fails", "ref", f.ref, "err", err)
		return permanent(err)
	}
	return err
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
