package sandbox

import (
	"errors"
	"slices"
	"time"
)

// The handler cache keeps a function's sandboxes after an invocation, frozen by the cgroup
// freezer, for as long as the function's Policy says: the next invocation thaws one (the hot
// path) instead of starting a sandbox. When the policy says to pre-warm, the sandbox is
// destroyed at once and a pending pre-warm is recorded instead: at its time the sweeper
// starts a sandbox, set up and waiting for its first event (as a spare is), and puts it in
// the cache for the policy's keep-alive. An invocation that arrives before a pre-warm's time
// cancels it (the instance the policy planned for is not loaded yet, as the simulator
// models it). fn.idle is ordered by entry; each box expires at its own time.
//
// Idle time is charged per function as memory (the function's limit) × time idle, the
// simulator's wasted memory-time.

// pendingWarm is a pre-warm a policy asked for: a sandbox to start at at and keep idle for
// keep.
type pendingWarm struct {
	at   time.Time
	keep time.Duration
}

// popIdle takes fn's most recently cached idle sandbox, or nil; its idle time is charged.
// m.mu held.
func (fn *function) popIdle(now time.Time) *box {
	n := len(fn.idle)
	if n == 0 {
		return nil
	}
	b := fn.idle[n-1]
	fn.idle = fn.idle[:n-1]
	fn.chargeIdle(b, now)
	return b
}

// pushIdle puts b into fn's handler cache as idle from now until expires. m.mu held.
func (fn *function) pushIdle(b *box, now, expires time.Time) {
	b.idleSince, b.expires = now, expires
	fn.idle = append(fn.idle, b)
}

// chargeIdle adds b's idle time up to now to fn's wasted memory-time. m.mu held.
func (fn *function) chargeIdle(b *box, now time.Time) {
	fn.stats.IdleMBSeconds += idleMBSeconds(fn, b, now)
}

func idleMBSeconds(fn *function, b *box, now time.Time) float64 {
	return float64(fn.MemoryMB) * max(now.Sub(b.idleSince), 0).Seconds()
}

// cancelPending drops fn's pre-warms not yet due at now: an invocation came first. m.mu held.
func (fn *function) cancelPending(now time.Time) {
	fn.pending = slices.DeleteFunc(fn.pending, func(p pendingWarm) bool { return p.at.After(now) })
}

// healthy reports whether b, the sandbox of an invocation that ended with err, may serve
// again: it exists, and err is nil or the handler raised.
func healthy(b *box, err error) bool {
	return b != nil && (err == nil || errors.Is(err, ErrHandler))
}

// freeze freezes b for the handler cache; a sandbox that fails to freeze is not cached.
func (m *Manager) freeze(fn *function, b *box) bool {
	if err := b.group.Freeze(); err != nil {
		m.log.Warn("freeze sandbox", "function", fn.Name, "err", err)
		return false
	}
	return true
}

// wakeSweeper tells the sweeper that a deadline was added.
func (m *Manager) wakeSweeper() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// sweep expires idle sandboxes and starts due pre-warms, each at its own time, until Close.
func (m *Manager) sweep() {
	defer close(m.done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		wait := time.Hour
		if next := m.tick(); !next.IsZero() {
			wait = max(next.Sub(m.cfg.Now()), time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-m.stop:
			return
		case <-m.wake:
		case <-timer.C:
		}
	}
}

// tick destroys the idle sandboxes whose keep-alive ran out, starts the pre-warms that are
// due, and returns the next time either is due (zero: none).
func (m *Manager) tick() (next time.Time) {
	now := m.cfg.Now()
	var old []*box
	soonest := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	m.mu.Lock()
	for _, fn := range m.funcs {
		fn.idle = slices.DeleteFunc(fn.idle, func(b *box) bool {
			if now.Before(b.expires) {
				soonest(b.expires)
				return false
			}
			fn.chargeIdle(b, now)
			old = append(old, b)
			return true
		})
		fn.pending = slices.DeleteFunc(fn.pending, func(p pendingWarm) bool {
			if now.Before(p.at) {
				soonest(p.at)
				return false
			}
			fn.stats.PreWarms++
			m.background.Add(1)
			go m.prewarm(fn, p.keep)
			return true
		})
	}
	m.mu.Unlock()
	for _, b := range old {
		if err := b.destroy(m.pool); err != nil {
			m.log.Warn("expire sandbox", "err", err)
		}
	}
	return next
}

// prewarm starts a sandbox of fn, set up and waiting for its first event, and caches it
// idle for keep.
func (m *Manager) prewarm(fn *function, keep time.Duration) {
	defer m.background.Done()
	b, err := m.ready(fn)
	if err != nil {
		m.log.Warn("pre-warm sandbox", "function", fn.Name, "err", err)
		return
	}
	b.prewarmed = true
	m.mu.Lock()
	cached := !fn.gone && !m.closed
	if cached {
		now := m.cfg.Now()
		fn.pushIdle(b, now, now.Add(keep))
	}
	m.mu.Unlock()
	if !cached {
		b.destroy(m.pool)
		return
	}
	m.wakeSweeper()
}
