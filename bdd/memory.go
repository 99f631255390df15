package bdd

import (
	"context"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"time"
)

// liveHeadroom is how far above the live heap the memory limit always stays: the
// collector then runs at most as often as with GOGC=10, however large the live heap
// grows, so a limit set too low for the number of devices costs some CPU instead of
// making collection thrash. The read path allocates little (its buffers are
// pooled), so collections stay rare even this close.
const liveHeadroom = 1.1

// memoryLimit is the soft limit for a configured limit and a live heap size.
func memoryLimit(configured, live int64) int64 {
	return max(configured, int64(float64(live)*liveHeadroom))
}

// LimitMemory keeps the Go runtime's soft memory limit at limit, raised to stay
// liveHeadroom above the live heap, re-evaluating it every interval until ctx is
// done. With a small limit the daemon returns memory to the system promptly (its
// live heap is mostly per-device I/O buffers and layer indexes).
func LimitMemory(ctx context.Context, limit int64, interval time.Duration) {
	sample := []rtmetrics.Sample{{Name: "/gc/heap/live:bytes"}}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		rtmetrics.Read(sample)
		debug.SetMemoryLimit(memoryLimit(limit, int64(sample[0].Value.Uint64())))
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
