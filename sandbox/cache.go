package sandbox

import (
	"errors"
	"slices"
	"time"
)

// The handler cache keeps each function's sandboxes after an invocation, frozen by the
// cgroup freezer, for Config.KeepAlive: the next invocation thaws one (the hot path) instead
// of starting a sandbox. fn.idle is ordered by last use; the sweeper destroys the expired.

// popIdle takes fn's most recently used idle sandbox, or nil. m.mu held.
func (fn *function) popIdle() *box {
	n := len(fn.idle)
	if n == 0 {
		return nil
	}
	b := fn.idle[n-1]
	fn.idle = fn.idle[:n-1]
	return b
}

// pushIdle puts b, frozen, into fn's handler cache as used at now. m.mu held.
func (fn *function) pushIdle(b *box, now time.Time) {
	b.lastUsed = now
	fn.idle = append(fn.idle, b)
}

// cacheable reports whether b, the sandbox of an invocation of fn that ended with err, may go
// into the handler cache, and freezes it if so: caching is on, and the sandbox is healthy
// (err is nil, or the handler raised). A sandbox that fails to freeze is not cacheable.
func (m *Manager) cacheable(fn *function, b *box, err error) bool {
	if b == nil || (err != nil && !errors.Is(err, ErrHandler)) || m.cfg.KeepAlive <= 0 {
		return false
	}
	if ferr := b.group.Freeze(); ferr != nil {
		m.log.Warn("freeze sandbox", "function", fn.Name, "err", ferr)
		return false
	}
	return true
}

// sweep destroys idle sandboxes older than the keep-alive TTL until Close.
func (m *Manager) sweep() {
	defer close(m.done)
	if m.cfg.KeepAlive <= 0 {
		<-m.stop
		return
	}
	tick := time.NewTicker(max(m.cfg.KeepAlive/4, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-tick.C:
		}
		m.expire()
	}
}

// expire destroys the idle sandboxes whose keep-alive ran out.
func (m *Manager) expire() {
	cutoff := m.cfg.Now().Add(-m.cfg.KeepAlive)
	var old []*box
	m.mu.Lock()
	for _, fn := range m.funcs {
		// idle is ordered by last use, so the expired ones are a prefix.
		n := 0
		for n < len(fn.idle) && fn.idle[n].lastUsed.Before(cutoff) {
			n++
		}
		old = append(old, fn.idle[:n]...)
		fn.idle = slices.Delete(fn.idle, 0, n)
	}
	m.mu.Unlock()
	for _, b := range old {
		if err := b.destroy(m.pool); err != nil {
			m.log.Warn("expire sandbox", "err", err)
		}
	}
}
