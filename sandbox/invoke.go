package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/obdproject/obd/sandbox/sandboxapi"
)

// Result is the outcome of one invocation.
type Result struct {
	Output json.RawMessage // the handler's return value as JSON
	Path   sandboxapi.StartPath
	Start  time.Duration // obtaining a ready sandbox (thaw, fork or start + handler import)
}

// Invoke runs function name with event (JSON) and returns its result. A handler that raises
// gives ErrHandler, one that runs past the function's timeout ErrTimeout (its sandbox is
// killed), one whose sandbox dies ErrCrashed. Starting a sandbox is bounded by
// Config.StartTimeout, not by the function's timeout.
//
// The sandbox is, in order: the function's most recently cached idle one (thawed: hot; or
// pre-warmed by its policy), an idle one another function lends (borrowed: see lend.go), or
// a new one (warm from a zygote, or cold).
func (m *Manager) Invoke(ctx context.Context, name string, event json.RawMessage) (Result, error) {
	begin := time.Now()
	arrival := m.cfg.Now()
	fn, b, lent, err := m.checkOut(name, arrival)
	if err != nil {
		return Result{}, err
	}
	// Starting has its own bound: the function's timeout is for its handler.
	startCtx, cancel := context.WithTimeout(ctx, m.cfg.StartTimeout)
	res := Result{Path: sandboxapi.Hot}
	switch {
	case b != nil && b.prewarmed:
		res.Path = sandboxapi.PreWarmed
		b.prewarmed = false // from here on an ordinary sandbox, frozen when idle
		err = b.begin(startCtx, request{Event: event}, res.Path)
		if err != nil {
			b.destroy(m.pool)
			b = nil
		}
	case b != nil:
		err = b.group.Thaw()
	case lent != nil:
		b, err = m.borrow(startCtx, fn, lent, event)
		if err == nil {
			res.Path = sandboxapi.Borrowed
			break
		}
		m.log.Warn("borrowed sandbox failed, starting one", "function", fn.Name, "err", err)
		fallthrough
	default:
		b, res.Path, err = m.start(startCtx, fn, event)
	}
	cancel()
	res.Start = time.Since(begin)
	if err == nil {
		callCtx, cancel := context.WithTimeout(ctx, fn.Timeout)
		res.Output, err = b.call(callCtx, event)
		cancel()
	}
	m.checkIn(fn, b, res.Path, err, arrival, time.Since(begin))
	if err != nil {
		return res, fmt.Errorf("function %s: %w", name, err)
	}
	return res, nil
}

// checkOut finds function name for an invocation arriving at now, counts it busy, cancels
// its pre-warms not yet due and takes its most recently cached idle sandbox, still frozen
// unless pre-warmed; without one, under a lending policy, an idle sandbox of another function
// that covers it (lent, taken from the lender's cache). Both are nil when a sandbox must be
// started. checkIn must follow.
func (m *Manager) checkOut(name string, now time.Time) (fn *function, b, lent *box, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	fn, ok := m.funcs[name]
	if !ok || m.closed {
		return nil, nil, nil, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	fn.busy++
	fn.cancelPending(now)
	if b = fn.popIdle(now); b == nil && fn.policy.Lends() {
		lent = m.lend(fn, now)
	}
	return fn, b, lent, nil
}

// checkIn ends an invocation of fn that arrived at arrival, took took and ran on b (nil
// when the start failed, an import that raised included), obtained by path: it is counted,
// fn's policy decides on the idle time that follows, and b goes into the handler cache or
// is destroyed (caching is off, the function is gone, the policy pre-warms instead, or the
// sandbox failed: a handler that raised leaves a healthy sandbox).
func (m *Manager) checkIn(fn *function, b *box, path sandboxapi.StartPath, err error, arrival time.Time, took time.Duration) {
	end := m.cfg.Now()
	preWarm, keepAlive := fn.policy.Decide(fn.Name, arrival, end)
	keep := healthy(b, err) && keepAlive > 0 && preWarm == 0 && m.freeze(fn, b)
	m.mu.Lock()
	fn.busy--
	fn.count(path, err, took)
	live := !fn.gone && !m.closed
	keep = keep && live
	if keep {
		fn.pushIdle(b, end, end.Add(keepAlive))
	}
	warm := live && preWarm > 0 && keepAlive > 0
	if warm {
		fn.pending = append(fn.pending, pendingWarm{at: end.Add(preWarm), keep: keepAlive})
	}
	m.mu.Unlock()
	if keep || warm {
		m.wakeSweeper()
	}
	if !keep && b != nil {
		m.destroyLater(b, fn.Name)
	}
}
