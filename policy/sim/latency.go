package sim

import "time"

// latencyHistogram counts added latencies in 1 ms buckets up to latencyCap, and beyond it in
// one overflow bucket, so percentiles over any number of invocations need fixed memory.
type latencyHistogram struct {
	buckets  []int64
	overflow int64
	max      time.Duration
	total    int64
}

const latencyCap = 10 * time.Minute

func newLatencyHistogram() *latencyHistogram {
	return &latencyHistogram{buckets: make([]int64, latencyCap/time.Millisecond)}
}

// add counts n invocations that had latency d.
func (h *latencyHistogram) add(d time.Duration, n int64) {
	d = max(d, 0)
	h.total += n
	h.max = max(h.max, d)
	if i := int(d / time.Millisecond); i < len(h.buckets) {
		h.buckets[i] += n
	} else {
		h.overflow += n
	}
}

// quantile returns the q-quantile, rounded down to the millisecond (the maximum when it falls
// in the overflow bucket).
func (h *latencyHistogram) quantile(q float64) time.Duration {
	if h.total == 0 {
		return 0
	}
	rank := int64(q * float64(h.total))
	var seen int64
	for i, n := range h.buckets {
		seen += n
		if seen > rank {
			return time.Duration(i) * time.Millisecond
		}
	}
	return h.max
}
