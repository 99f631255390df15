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
	case sandboxapi.PreWarmed:
		fn.stats.PreWarmed++
	case sandboxapi.Borrowed:
		fn.stats.Borrowed++
	case sandboxapi.Restored:
		fn.stats.Restored++
	}
}

// Stats returns the counters of function name, with its idle and busy sandboxes as they are
// now and their idle time up to now.
func (m *Manager) Stats(name string) (sandboxapi.Stats, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	fn, ok := m.funcs[name]
	if !ok {
		return sandboxapi.Stats{}, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	return fn.statsAt(m.cfg.Now()), nil
}

// statsAt is fn's counters at now. m.mu held.
func (fn *function) statsAt(now time.Time) sandboxapi.Stats {
	st := fn.stats
	st.Idle, st.Busy = len(fn.idle), fn.busy
	for _, b := range fn.idle {
		st.IdleMBSeconds += idleMBSeconds(fn, b, now)
	}
	return st
}

// ServerStats returns the counters over all registered functions, and the lends.
func (m *Manager) ServerStats() sandboxapi.ServerStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.cfg.Now()
	st := sandboxapi.ServerStats{Functions: len(m.funcs), Lends: m.lends, ColdStartsSaved: m.lendsServed, LendFailures: m.lendFailures}
	for _, fn := range m.funcs {
		fs := fn.statsAt(now)
		st.PreWarms += fs.PreWarms
		st.IdleMBSeconds += fs.IdleMBSeconds
	}
	return st
}
