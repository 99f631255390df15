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
func (m *Manager) Invoke(ctx context.Context, name string, event json.RawMessage) (Result, error) {
	begin := time.Now()
	fn, b, err := m.checkOut(name)
	if err != nil {
		return Result{}, err
	}
	res := Result{Path: sandboxapi.Hot}
	if b != nil {
		err = b.group.Thaw()
	} else {
		// Starting has its own bound: the function's timeout is for its handler.
		startCtx, cancel := context.WithTimeout(ctx, m.cfg.StartTimeout)
		b, res.Path, err = m.start(startCtx, fn, event)
		cancel()
	}
	res.Start = time.Since(begin)
	if err == nil {
		callCtx, cancel := context.WithTimeout(ctx, fn.Timeout)
		res.Output, err = b.call(callCtx, event)
		cancel()
	}
	m.checkIn(fn, b, res.Path, err, time.Since(begin))
	if err != nil {
		return res, fmt.Errorf("function %s: %w", name, err)
	}
	return res, nil
}

// checkOut finds function name for an invocation, counts it busy and takes its most recently
// used idle sandbox, still frozen (nil when there is none). checkIn must follow.
func (m *Manager) checkOut(name string) (*function, *box, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	fn, ok := m.funcs[name]
	if !ok || m.closed {
		return nil, nil, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	fn.busy++
	return fn, fn.popIdle(), nil
}

// checkIn ends an invocation of fn on path that took took: it is counted, and b goes into
// the handler cache, or is destroyed when caching is off, the function is gone, or the
// sandbox failed (a handler that raised leaves a healthy sandbox, which is kept). b is nil
// when the start failed, an import that raised included.
func (m *Manager) checkIn(fn *function, b *box, path sandboxapi.StartPath, err error, took time.Duration) {
	keep := m.cacheable(fn, b, err)
	m.mu.Lock()
	fn.busy--
	fn.count(path, err, took)
	keep = keep && !fn.gone && !m.closed
	if keep {
		fn.pushIdle(b, m.cfg.Now())
	}
	m.mu.Unlock()
	if !keep && b != nil {
		m.destroyLater(b, fn.Name)
	}
}
