package remotefetch

import (
	"context"
	"fmt"
	"time"
)

// foregroundPoll is how often background work checks whether foreground reads are done.
const foregroundPoll = 5 * time.Millisecond

// A chunk whose background fetch fails (each try bounded by ReadTimeout, retries included)
// is tried again backgroundRetries times, after pauses doubling from ReadTimeout up to
// backgroundPauseMax; then background fill stops.
const (
	backgroundRetries  = 4
	backgroundPauseMax = time.Minute
)

// startBackground fills the rest of the blob after BackgroundDelay, in order, at most
// BackgroundRate bytes/s, pausing whenever a foreground read is in progress so that it never
// competes with one for the connection.
func (f *filler) startBackground() {
	f.wg.Go(func() {
		delay := time.NewTimer(f.opts.BackgroundDelay)
		defer delay.Stop()
		select {
		case <-delay.C:
		case <-f.ctx.Done():
			return
		}
		if err := f.backgroundFill(); err != nil && f.ctx.Err() == nil {
			f.log.Warn("remotefetch: background fill stopped", "err", err)
		}
	})
}

// backgroundFill fetches the missing units in chunks, in order, until the blob is present,
// the filler closes, a fetch fails for good, or a chunk fails backgroundRetries+1 times.
func (f *filler) backgroundFill() error {
	lay := f.entry.Layout()
	// Small chunks keep a foreground read from waiting long behind a background request.
	chunk := int(max(1, min(f.opts.MaxRequestSize, 1<<20)/lay.Unit))
	start, sent, failures := time.Now(), int64(0), 0
	for u := 0; u < lay.Units(); {
		if !f.backgroundTurn(start, sent) {
			return f.ctx.Err()
		}
		last := min(u+chunk, lay.Units()) - 1
		missing := f.entry.Missing(u, last)
		if len(missing) == 0 {
			u = last + 1
			continue
		}
		off, _ := lay.UnitRange(missing[0])
		endOff, endN := lay.UnitRange(missing[len(missing)-1])
		ctx, cancel := context.WithTimeout(f.ctx, f.opts.ReadTimeout)
		err := f.ensure(ctx, off, endOff+endN)
		cancel()
		if err != nil {
			if isPermanent(err) || f.ctx.Err() != nil || f.failed() != nil {
				return err
			}
			// The deadline passed: try the chunk again after a pause, a bounded number of
			// times (foreground reads still fetch what they need).
			if failures++; failures > backgroundRetries {
				return fmt.Errorf("remotefetch: background fill: bytes [%d, %d) failed %d times: %w", off, endOff+endN, failures, err)
			}
			if !sleepCtx(f.ctx, min(f.opts.ReadTimeout<<(failures-1), backgroundPauseMax)) {
				return f.ctx.Err()
			}
			continue
		}
		failures = 0
		sent += int64(len(missing)) * lay.Unit
		u = last + 1
	}
	return nil
}

// backgroundTurn waits until no foreground read is in progress and background fill, which
// started at start and has sent bytes since, is within BackgroundRate. It returns false when
// the filler closes first.
func (f *filler) backgroundTurn(start time.Time, sent int64) bool {
	for f.busy() {
		if !sleepCtx(f.ctx, foregroundPoll) {
			return false
		}
	}
	ahead := time.Duration(float64(sent)/float64(f.opts.BackgroundRate)*float64(time.Second)) - time.Since(start)
	return ahead <= 0 || sleepCtx(f.ctx, ahead)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
