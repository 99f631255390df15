package remotefetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"
)

// Range fills: a trace replay fetches exactly the ranges the workload read, not the fill
// units around them. On a slow link the rounding costs: a 16 KiB unit around each 3-5 KB
// compressed block of a start trace adds a fifth to the bytes. The cache keeps such ranges (a
// cache.Writer need not cover whole units), and a read inside one is served from it; a read
// that strays outside fetches whole units as always.

// rangeCall is one in-flight range fill (Blob.FillRange): the bytes [off, end), counted from off in the
// embedded unitCall (avail, buf, done, err), so readers take them as they arrive.
type rangeCall struct {
	off, end int64
	*unitCall
}

func (f *filler) fillRange(ctx context.Context, off, end int64) error {
	if f.entry.HasRange(off, end) {
		return nil
	}
	if end-off > streamBatch {
		return f.ensure(ctx, off, end)
	}
	c, err := f.claimRange(off, end)
	if err != nil {
		return err
	}
	if c == nil {
		return f.ensure(ctx, off, end)
	}
	return f.fetchRange(ctx, c)
}

// ensure makes every unit of [off, end) present, fetching the missing ones.
func (f *filler) ensure(ctx context.Context, off, end int64) error {
	_, _, err := f.fetch(ctx, off, end, nil)
	return err
}

// claimRange registers a range call for [off, end), or returns nil if a unit of the range
// or an overlapping range is in flight.
func (f *filler) claimRange(off, end int64) (*rangeCall, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, ErrClosed
	}
	if err := f.failed(); err != nil {
		return nil, err
	}
	lay := f.entry.Layout()
	for u := lay.UnitOf(off); u <= lay.UnitOf(end-1); u++ {
		if f.inflight[u] != nil {
			return nil, nil
		}
	}
	for _, c := range f.ranges {
		if c.off < end && off < c.end {
			return nil, nil
		}
	}
	c := &rangeCall{off: off, end: end, unitCall: newUnitCall(-1)}
	f.ranges = append(f.ranges, c)
	return c, nil
}

// fetchRange fetches the bytes of c, with retries and backoff until ctx ends or the error is
// permanent, and makes them present; then c ends with the result.
func (f *filler) fetchRange(ctx context.Context, c *rangeCall) (err error) {
	defer func() {
		f.mu.Lock()
		f.ranges = slices.DeleteFunc(f.ranges, func(rc *rangeCall) bool { return rc == c })
		c.err = err
		close(c.done)
		f.mu.Unlock()
	}()
	w, err := f.entry.NewWriter(c.off, c.end) // before fetching: a discard meanwhile refuses the bytes
	if err != nil {
		return fmt.Errorf("remotefetch: blob %s: %w", f.dgst, err)
	}
	defer w.Abort() // unless committed
	buf := make([]byte, c.end-c.off)
	if err := f.receiveRange(ctx, c, buf); err != nil {
		return err
	}
	if _, err := w.WriteAt(buf, c.off); err != nil {
		return fmt.Errorf("remotefetch: blob %s: %w", f.dgst, err)
	}
	if err := f.commit(w, int64(len(buf))); err != nil {
		return fmt.Errorf("remotefetch: blob %s: %w", f.dgst, err)
	}
	c.detach() // readers find the bytes in the file now
	return nil
}

// receiveRange receives the bytes of c into buf, retrying with backoff until ctx ends or the
// error is permanent.
func (f *filler) receiveRange(ctx context.Context, c *rangeCall, buf []byte) (err error) {
	mismatches := 0
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			if !f.backoff(ctx, attempt) {
				return fmt.Errorf("remotefetch: blob %s range %d-%d: %w (last cause: %v)", f.dgst, c.off, c.end, ctx.Err(), err)
			}
			f.stats.retry()
		}
		if err = f.fetchRangeOnce(ctx, c, buf); err == nil {
			return nil
		}
		err = f.mismatchLimit(err, &mismatches)
		f.failedAttempt(err)
		if isPermanent(err) || ctx.Err() != nil {
			return fmt.Errorf("remotefetch: blob %s range %d-%d: %w", f.dgst, c.off, c.end, err)
		}
	}
}

// fetchRangeOnce is one attempt at the bytes of c, received into buf.
func (f *filler) fetchRangeOnce(ctx context.Context, c *rangeCall, buf []byte) error {
	attemptCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	start := time.Now()
	r, closeBody, err := f.startAttempt(attemptCtx, cancel, c.off, int64(len(buf)))
	if err != nil {
		return err
	}
	defer closeBody()
	c.attach(buf) // a retry receives the range anew
	got := 0
	for got < len(buf) {
		n, err := r.Read(buf[got:])
		got += n
		if n > 0 {
			c.advance(int64(got))
		}
		if got == len(buf) {
			break
		}
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return withCause(attemptCtx, fmt.Errorf("remotefetch: body of %s at %d: %w", f.dgst, c.off+int64(got), err))
		}
	}
	f.latency.Observe(time.Since(start).Seconds())
	f.log.Debug("remotefetch: fetched", "off", c.off, "bytes", len(buf), "took", time.Since(start))
	return nil
}

// fromRange serves [off, end) from an in-flight range call that covers it, if there is one:
// ok reports that the bytes are readable, copied into dst (inMem) or in the cache file;
// waited that they had not all arrived yet. dst nil waits until the range is stored.
func (f *filler) fromRange(ctx context.Context, off, end int64, dst []byte) (ok, inMem, waited bool) {
	f.mu.Lock()
	c := f.rangeCoveringLocked(off, end)
	f.mu.Unlock()
	if c == nil {
		return false, false, false
	}
	if dst == nil {
		select {
		case <-c.done:
		default:
			waited = true
		}
		ok, _ = c.waitStored(ctx)
		return ok, false, waited
	}
	ok, inMem, waited, _ = c.read(ctx, dst, off-c.off)
	return ok, inMem, waited
}

// rangeCoveringLocked returns the range fill in flight that covers [off, end), if any. f.mu
// is held.
func (f *filler) rangeCoveringLocked(off, end int64) *rangeCall {
	for _, c := range f.ranges {
		if c.off <= off && end <= c.end {
			return c
		}
	}
	return nil
}
