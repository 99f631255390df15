package remotefetch

import (
	"context"
	"time"
)

// foregroundPoll is how often background fill checks whether foreground reads are done.
const foregroundPoll = 5 * time.Millisecond

// startBackground fills the rest of the blob after BackgroundDelay, in order, at most
// BackgroundRate bytes/s, pausing whenever a foreground read is in progress so that it never
// competes with one for the connection.
func (b *Blob) startBackground() {
	b.wg.Go(func() {
		delay := time.NewTimer(b.f.opts.BackgroundDelay)
		defer delay.Stop()
		select {
		case <-delay.C:
		case <-b.ctx.Done():
			return
		}
		if err := b.backgroundFill(); err != nil && b.ctx.Err() == nil {
			b.log.Warn("remotefetch: background fill stopped", "err", err)
		}
	})
}

func (b *Blob) backgroundFill() error {
	unit := b.entry.Layout().Unit
	rate := b.f.opts.BackgroundRate
	// Small chunks keep a foreground read from waiting long behind a background request.
	chunk := int(max(1, min(b.f.opts.MaxRequestSize, 1<<20)/unit))
	start, sent := time.Now(), int64(0)
	for u := 0; u < b.entry.Layout().Units(); {
		for b.foreground.Load() > 0 {
			if !sleepCtx(b.ctx, foregroundPoll) {
				return b.ctx.Err()
			}
		}
		if ahead := time.Duration(float64(sent)/float64(rate)*float64(time.Second)) - time.Since(start); ahead > 0 {
			if !sleepCtx(b.ctx, ahead) {
				return b.ctx.Err()
			}
		}
		last := min(u+chunk, b.entry.Layout().Units()) - 1
		missing := b.entry.Missing(u, last)
		if len(missing) == 0 {
			u = last + 1
			continue
		}
		off, _ := b.entry.Layout().UnitRange(missing[0])
		endOff, endN := b.entry.Layout().UnitRange(missing[len(missing)-1])
		ctx, cancel := context.WithTimeout(b.ctx, b.f.opts.ReadTimeout)
		err := b.ensure(ctx, off, endOff+endN)
		cancel()
		if err != nil {
			if isPermanent(err) || b.ctx.Err() != nil || b.poisoned.Load() != nil {
				return err
			}
			continue // the deadline passed: try the chunk again
		}
		sent += int64(len(missing)) * unit
		u = last + 1
	}
	return nil
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
