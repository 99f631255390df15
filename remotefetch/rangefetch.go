package remotefetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// Range fills: a trace replay fetches exactly the ranges the workload read, not the fill
// units around them. On a slow link the rounding costs: a 16 KiB unit around each 3-5 KB
// compressed block of a start trace adds a fifth to the bytes. The cache keeps such ranges (a
// cache.Writer need not cover whole units), and a read inside one is served from it; a read
// that strays outside fetches whole units as always.

// rangeCall is one in-flight FillRange: the bytes [off, end), counted from off in the
// embedded unitCall (avail, buf, done, err), so readers take them as they arrive.
type rangeCall struct {
	off, end int64
	*unitCall
}

// FillRange makes [off, off+n) readable from the cache with one request for exactly those
// bytes (retried like any fetch). Where the range's units are being fetched already, it
// waits for them and fetches the rest as whole units instead; so it does for a range larger
// than a stream batch, whose rounding costs little and which the unit path fetches in
// bounded memory.
func (b *Blob) FillRange(ctx context.Context, off, n int64) error {
	if off < 0 || n < 0 || off+n > b.size {
		return fmt.Errorf("remotefetch: blob %s: fill range %d+%d outside size %d", b.dgst, off, n, b.size)
	}
	end := off + n
	if n == 0 || b.entry.HasRange(off, end) {
		return nil
	}
	if n > streamBatch {
		return b.ensure(ctx, off, end)
	}
	c, err := b.claimRange(off, end)
	if err != nil {
		return err
	}
	if c == nil {
		return b.ensure(ctx, off, end)
	}
	return b.fetchRange(ctx, c)
}

// claimRange registers a range call for [off, end), or returns nil if a unit of the range
// or an overlapping range is in flight.
func (b *Blob) claimRange(off, end int64) (*rangeCall, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, ErrClosed
	}
	if perr := b.poisoned.Load(); perr != nil {
		return nil, *perr
	}
	unit := b.entry.Layout().Unit
	for u := int(off / unit); u <= int((end-1)/unit); u++ {
		if b.inflight[u] != nil {
			return nil, nil
		}
	}
	for _, c := range b.ranges {
		if c.off < end && off < c.end {
			return nil, nil
		}
	}
	c := &rangeCall{off: off, end: end, unitCall: newUnitCall(-1)}
	b.ranges = append(b.ranges, c)
	return c, nil
}

// fetchRange fetches the bytes of c, with retries and backoff until ctx ends or the error is
// permanent, and stores them.
func (b *Blob) fetchRange(ctx context.Context, c *rangeCall) (err error) {
	defer func() {
		b.mu.Lock()
		for i, rc := range b.ranges {
			if rc == c {
				b.ranges = append(b.ranges[:i], b.ranges[i+1:]...)
				break
			}
		}
		c.err = err
		close(c.done)
		b.mu.Unlock()
	}()
	w, err := b.entry.NewWriter(c.off, c.end)
	if err != nil {
		return fmt.Errorf("remotefetch: blob %s: %w", b.dgst, err)
	}
	defer w.Abort() // unless committed
	buf := make([]byte, c.end-c.off)
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			if !b.backoff(ctx, attempt) {
				return fmt.Errorf("remotefetch: blob %s range %d-%d: %w (last cause: %v)", b.dgst, c.off, c.end, ctx.Err(), err)
			}
			b.stats.retry()
		}
		if err = b.fetchRangeOnce(ctx, c, buf); err == nil {
			break
		}
		b.lastErr.Store(&err)
		b.log.Debug("remotefetch: fetch failed", "err", err)
		if isPermanent(err) || ctx.Err() != nil {
			return fmt.Errorf("remotefetch: blob %s range %d-%d: %w", b.dgst, c.off, c.end, err)
		}
	}
	if _, err = w.WriteAt(buf, c.off); err != nil {
		return fmt.Errorf("remotefetch: blob %s: %w", b.dgst, err)
	}
	complete, err := w.Commit()
	if err != nil {
		return fmt.Errorf("remotefetch: blob %s: %w", b.dgst, err)
	}
	c.detach() // readers find the bytes in the file now
	b.stats.fetchedBytes(len(buf))
	if complete {
		b.startVerify()
	}
	return nil
}

// fetchRangeOnce is one attempt at the bytes of c, received into buf.
func (b *Blob) fetchRangeOnce(ctx context.Context, c *rangeCall, buf []byte) error {
	attemptCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	start := time.Now()
	r, closeBody, err := b.startAttempt(attemptCtx, cancel, c.off, int64(len(buf)))
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
			return withCause(attemptCtx, fmt.Errorf("remotefetch: body of %s at %d: %w", b.dgst, c.off+int64(got), err))
		}
	}
	b.f.metrics.fetchLatency.Observe(time.Since(start).Seconds())
	b.log.Debug("remotefetch: fetched", "off", c.off, "bytes", len(buf), "took", time.Since(start))
	return nil
}

// fromRange serves [off, end) from an in-flight range call that covers it, if there is one:
// ok reports that the bytes are readable, copied into dst (inMem) or in the cache file;
// waited that they had not all arrived yet. dst nil waits until the range is stored.
func (b *Blob) fromRange(ctx context.Context, off, end int64, dst []byte) (ok, inMem, waited bool) {
	b.mu.Lock()
	c := b.rangeCoveringLocked(off, end)
	b.mu.Unlock()
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

// rangeCoveringLocked returns the FillRange in flight that covers [off, end), if any. b.mu is
// held.
func (b *Blob) rangeCoveringLocked(off, end int64) *rangeCall {
	for _, c := range b.ranges {
		if c.off <= off && end <= c.end {
			return c
		}
	}
	return nil
}
