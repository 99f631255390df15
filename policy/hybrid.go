package policy

import (
	"fmt"
	"math"
	"sync"
	"time"
)

// HybridConfig tunes the hybrid histogram policy. The zero value of a field takes the default
// named in its comment (the values of Shahrad et al., ATC'20).
type HybridConfig struct {
	Range          time.Duration // idle times tracked by the histogram; default 4h
	Bin            time.Duration // histogram bin width; default 1m
	HeadPercentile float64       // pre-warm point; default 5
	TailPercentile float64       // end of the keep-alive window; default 99
	Margin         float64       // widening of both ends, as a fraction; default 0.10
	MinCV          float64       // histograms whose bin counts vary less are not representative; default 2
	MinSamples     int           // fewer observed idle times count as scarce data; default 5
	MaxOOB         float64       // above this fraction of idle times beyond Range, forecast; default 0.5
	// Fallback decides while data is scarce or the histogram is not representative;
	// default fixed keep-alive of 10 minutes.
	Fallback Policy
}

func (c *HybridConfig) setDefaults() error {
	def := func(v *float64, d float64) {
		if *v == 0 {
			*v = d
		}
	}
	if c.Range == 0 {
		c.Range = 4 * time.Hour
	}
	if c.Bin == 0 {
		c.Bin = time.Minute
	}
	def(&c.HeadPercentile, 5)
	def(&c.TailPercentile, 99)
	def(&c.Margin, 0.10)
	def(&c.MinCV, 2)
	def(&c.MaxOOB, 0.5)
	if c.MinSamples == 0 {
		c.MinSamples = 5
	}
	if c.Fallback == nil {
		c.Fallback = Fixed{KeepAlive: 10 * time.Minute}
	}
	switch {
	case c.Bin < 0 || c.Range < c.Bin:
		return fmt.Errorf("%w: hybrid range %v must hold at least one bin of %v", ErrConfig, c.Range, c.Bin)
	case c.Range/c.Bin > 1<<20:
		return fmt.Errorf("%w: hybrid range %v has too many bins of %v", ErrConfig, c.Range, c.Bin)
	case c.HeadPercentile < 0 || c.HeadPercentile > c.TailPercentile || c.TailPercentile > 100:
		return fmt.Errorf("%w: hybrid percentiles %v and %v must satisfy 0 ≤ head ≤ tail ≤ 100", ErrConfig, c.HeadPercentile, c.TailPercentile)
	case c.Margin < 0 || c.Margin >= 1:
		return fmt.Errorf("%w: hybrid margin %v must be in [0, 1)", ErrConfig, c.Margin)
	case c.MinCV < 0 || c.MinSamples < 0 || c.MaxOOB < 0 || c.MaxOOB > 1:
		return fmt.Errorf("%w: hybrid thresholds must not be negative (MaxOOB ≤ 1)", ErrConfig)
	}
	return nil
}

// Hybrid is the hybrid histogram policy (Shahrad et al., "Serverless in the Wild", ATC'20),
// kept per function rather than per application.
//
// Each function has a histogram of its idle times (from the end of one execution to the next
// arrival) in 1-minute bins over 4 hours. When the histogram is representative, the instance
// is unloaded after each execution and pre-warmed at the 5th percentile of idle time minus 10%,
// and kept loaded until the 99th percentile plus 10% (so KeepAlive is counted from the pre-warm
// point). When most idle times fall beyond the histogram's range, the next idle time is
// forecast by an autoregressive model (see ForecastIdle) instead. While data is scarce or the
// histogram is flat (coefficient of variation of bin counts below 2), the Fallback decides.
//
// Windows are recomputed at most once per bin width of invocation time per function, which
// keeps frequently invoked functions cheap; the histogram itself counts every invocation.
type Hybrid struct {
	cfg HybridConfig
	mu  sync.Mutex
	fns map[string]*idleHistogram
}

// NewHybrid returns a hybrid histogram policy.
func NewHybrid(cfg HybridConfig) (*Hybrid, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	return &Hybrid{cfg: cfg, fns: make(map[string]*idleHistogram)}, nil
}

// Name is "hybrid".
func (h *Hybrid) Name() string { return "hybrid" }

// Decide records the idle time that ended with inv's arrival and returns the window for the
// idle time that follows inv.
func (h *Hybrid) Decide(inv Invocation) Window {
	h.mu.Lock()
	defer h.mu.Unlock()
	f := h.fns[inv.Function]
	if f == nil {
		f = &idleHistogram{bins: make([]int, int(h.cfg.Range/h.cfg.Bin))}
		h.fns[inv.Function] = f
	}
	if !f.lastEnd.IsZero() {
		f.add(max(inv.Arrival.Sub(f.lastEnd), 0), h.cfg.Bin)
	}
	if inv.End.After(f.lastEnd) {
		f.lastEnd = inv.End
	}
	if f.valid && inv.End.Sub(f.computedAt) < h.cfg.Bin {
		return f.window
	}
	w, ok := h.window(f)
	if !ok {
		return h.cfg.Fallback.Decide(inv)
	}
	f.window, f.valid, f.computedAt = w, true, inv.End
	return w
}

// Forget drops fn's histogram.
func (h *Hybrid) Forget(fn string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.fns, fn)
}

// window computes f's window, or reports false when the fallback should decide.
func (h *Hybrid) window(f *idleHistogram) (Window, bool) {
	total := f.inRange + f.outOfRange
	if total < h.cfg.MinSamples {
		return Window{}, false
	}
	margin := h.cfg.Margin
	if float64(f.outOfRange) > h.cfg.MaxOOB*float64(total) {
		next, ok := ForecastIdle(f.recent.values())
		if !ok {
			return Window{}, false
		}
		return Window{PreWarm: time.Duration(float64(next) * (1 - margin)), KeepAlive: time.Duration(float64(next) * 2 * margin)}, true
	}
	if f.inRange == 0 || f.cv() < h.cfg.MinCV {
		return Window{}, false
	}
	head := time.Duration(f.percentileBin(h.cfg.HeadPercentile)) * h.cfg.Bin
	tail := time.Duration(f.percentileBin(h.cfg.TailPercentile)+1) * h.cfg.Bin
	preWarm := time.Duration(float64(head) * (1 - margin))
	end := time.Duration(float64(tail) * (1 + margin))
	return Window{PreWarm: preWarm, KeepAlive: end - preWarm}, true
}

// idleHistogram is one function's idle-time record.
type idleHistogram struct {
	bins       []int
	inRange    int
	outOfRange int
	sumSq      float64 // Σ bins[i]², kept so the coefficient of variation is O(1)
	recent     idleRing
	lastEnd    time.Time

	window     Window
	valid      bool
	computedAt time.Time
}

func (f *idleHistogram) add(idle, bin time.Duration) {
	f.recent.push(idle)
	i := int(idle / bin)
	if i >= len(f.bins) {
		f.outOfRange++
		return
	}
	f.sumSq += float64(2*f.bins[i] + 1)
	f.bins[i]++
	f.inRange++
}

// cv is the coefficient of variation (standard deviation over mean) of the bin counts.
func (f *idleHistogram) cv() float64 {
	n := float64(len(f.bins))
	mean := float64(f.inRange) / n
	variance := f.sumSq/n - mean*mean
	return math.Sqrt(max(variance, 0)) / mean
}

// percentileBin is the first bin at which the cumulative in-range count reaches p percent.
func (f *idleHistogram) percentileBin(p float64) int {
	target := p / 100 * float64(f.inRange)
	cum := 0
	for i, c := range f.bins {
		cum += c
		if c > 0 && float64(cum) >= target {
			return i
		}
	}
	return len(f.bins) - 1
}

// idleRing holds the most recent idle times, for the out-of-range forecast.
type idleRing struct {
	buf  [32]time.Duration
	n    int
	next int
}

func (r *idleRing) push(d time.Duration) {
	r.buf[r.next] = d
	r.next = (r.next + 1) % len(r.buf)
	r.n = min(r.n+1, len(r.buf))
}

// values returns the recorded idle times, oldest first.
func (r *idleRing) values() []time.Duration {
	out := make([]time.Duration, 0, r.n)
	for i := range r.n {
		out = append(out, r.buf[(r.next-r.n+i+len(r.buf))%len(r.buf)])
	}
	return out
}
