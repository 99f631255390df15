package sandbox

import (
	"fmt"
	"time"

	"github.com/obdproject/obd/sandbox/sandboxapi"
)

// count adds an invocation of fn to its counters: its sandbox obtained (or, when that failed,
// to be obtained) by path, ended with err, taking took. m.mu held.
func (fn *function) count(path sandboxapi.StartPath, err error, took time.Duration) {
	fn.stats.Invocations++
	fn.stats.TotalTime += took
	if err != nil {
		fn.stats.Errors++
	}
	switch path {
	case sandboxapi.Cold:
		fn.stats.Cold++
	case sandboxapi.Warm:
		fn.stats.Warm++
	case sandboxapi.Hot:
		fn.stats.Hot++
	}
}

// Stats returns the counters of function name, with its idle and busy sandboxes as they are
// now.
func (m *Manager) Stats(name string) (sandboxapi.Stats, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	fn, ok := m.funcs[name]
	if !ok {
		return sandboxapi.Stats{}, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	st := fn.stats
	st.Idle, st.Busy = len(fn.idle), fn.busy
	return st, nil
}
