package policy

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"gonum.org/v1/gonum/dsp/fourier"
	"gonum.org/v1/gonum/stat"
)

// NodeClass is one kind of node a warm instance can be placed on. Heterogeneous clusters mix
// fast, expensive nodes with slow, cheap ones.
type NodeClass struct {
	Name     string
	Price    float64 // cost of a unit of memory-time relative to the default class (> 0)
	Slowdown float64 // execution time multiplier relative to the default class (≥ 1)
}

// Check returns an error naming nc unless its price is above 0 and its slowdown at least 1.
// Callers wrap it in their own ErrConfig.
func (nc NodeClass) Check() error {
	if !(nc.Price > 0) || !(nc.Slowdown >= 1) {
		return fmt.Errorf("node class %q needs price > 0 and slowdown ≥ 1", nc.Name)
	}
	return nil
}

// PredictiveConfig tunes the predictive policy. A zero field takes the default in its comment.
type PredictiveConfig struct {
	History time.Duration // length of the per-minute invocation series analysed; default 512m
	Horizon time.Duration // how far ahead to forecast; default 2h
	Refit   time.Duration // how often a function's forecast is recomputed; default 30m
	// MinPeriodicity is the autocorrelation at the best lag above which a series counts as
	// periodic; default 0.5.
	MinPeriodicity float64
	Threshold      float64       // expected invocations per minute that count as "will be invoked"; default 0.3
	Lead           time.Duration // warm this long before a predicted minute starts; default 1m
	Slack          time.Duration // keep loaded this long after a predicted run of minutes; default 1m
	// ColdStart is the latency a warm instance saves, weighed against a slower class.
	// Default 1s.
	ColdStart time.Duration
	// MinConfidence is the hit rate of past forecasts below which the fallback decides;
	// default 0.3.
	MinConfidence float64
	// Classes are the node classes to choose from, index 0 the default. Default: one class.
	Classes []NodeClass
	// Fallback decides while history is short or forecasts miss; default fixed 10 minutes.
	Fallback Policy
}

func (c *PredictiveConfig) setDefaults() error {
	durations := []struct {
		v *time.Duration
		d time.Duration
	}{{&c.History, 512 * time.Minute}, {&c.Horizon, 2 * time.Hour}, {&c.Refit, 30 * time.Minute},
		{&c.Lead, time.Minute}, {&c.Slack, time.Minute}, {&c.ColdStart, time.Second}}
	for _, f := range durations {
		if *f.v == 0 {
			*f.v = f.d
		}
		if *f.v < 0 {
			return fmt.Errorf("%w: predictive durations must not be negative", ErrConfig)
		}
	}
	if c.MinPeriodicity == 0 {
		c.MinPeriodicity = 0.5
	}
	if c.Threshold == 0 {
		c.Threshold = 0.3
	}
	if c.MinConfidence == 0 {
		c.MinConfidence = 0.3
	}
	if len(c.Classes) == 0 {
		c.Classes = []NodeClass{{Name: "default", Price: 1, Slowdown: 1}}
	}
	if c.Fallback == nil {
		c.Fallback = Fixed{KeepAlive: 10 * time.Minute}
	}
	if c.History < minForecastHistory*time.Minute || c.History > 1<<14*time.Minute {
		return fmt.Errorf("%w: predictive history %v must be between %d minutes and about 11 days", ErrConfig, c.History, minForecastHistory)
	}
	if c.Horizon < time.Minute || c.Threshold < 0 || c.MinPeriodicity < 0 {
		return fmt.Errorf("%w: predictive horizon ≥ 1m, threshold ≥ 0 and periodicity ≥ 0 required", ErrConfig)
	}
	for _, nc := range c.Classes {
		if err := nc.Check(); err != nil {
			return fmt.Errorf("%w: %w", ErrConfig, err)
		}
	}
	return nil
}

// minForecastHistory is the shortest series, in minutes, worth a Fourier analysis.
const minForecastHistory = 64

// Predictive is an IceBreaker-style warm-up policy. It keeps each function's invocation counts
// per minute, and every Refit it forecasts the next Horizon of that series from its FFT: the
// power spectrum gives the series' autocorrelation (Wiener–Khinchin), whose first strong
// peak is the period, and a periodic series is forecast by averaging its past cycles at each
// phase. A series without a period that concentrates its invocations (busiest phase at least
// twice the mean) has no timing to predict and is left to the Fallback. (IceBreaker
// extrapolates the strongest harmonics directly; with sparse series such as a 30-minute
// timer, spectral leakage then puts ghost peaks between the real ones, which the
// period-then-average forecast avoids.)
//
// After an invocation it unloads the instance and warms one Lead before the next minute whose
// forecast reaches Threshold, keeping it until Slack after that run of minutes ends. The
// instance goes on the node class with the best utility: latency saved (ColdStart less the
// class's slowdown over the function's mean duration) per unit of memory price over the
// window. Forecasts are scored against the arrivals that follow them even while the Fallback
// decides, and take over only once their hit rate reaches MinConfidence.
type Predictive struct {
	cfg  PredictiveConfig
	mu   sync.Mutex
	fns  map[string]*invocationSeries
	ffts map[int]*fourier.FFT
}

// NewPredictive returns a predictive warm-up policy.
func NewPredictive(cfg PredictiveConfig) (*Predictive, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	return &Predictive{cfg: cfg, fns: make(map[string]*invocationSeries), ffts: make(map[int]*fourier.FFT)}, nil
}

// Name is "predictive".
func (p *Predictive) Name() string { return "predictive" }

// invocationSeries is one function's history and current forecast.
type invocationSeries struct {
	counts      []float64 // ring of per-minute counts, indexed by minute mod len
	first, last int64     // first and latest minute seen
	invocations int
	busy        time.Duration // summed execution time, for the mean duration

	forecast  []float64 // expected invocations for minutes fitMinute+1 ...
	fitMinute int64
	fitted    bool
	// the last fit attempt; attempts that find no period are repeated only every Refit
	triedMinute int64
	tried       bool

	lastWindow Window    // the last forecast window, kept even when the fallback decided
	windowFrom time.Time // the execution end it is counted from
	hasWindow  bool
	confidence float64
}

// Decide records inv and returns the window until its function's next predicted invocation.
func (p *Predictive) Decide(inv Invocation) Window {
	p.mu.Lock()
	defer p.mu.Unlock()
	minute := inv.Arrival.Truncate(time.Minute).Unix() / 60
	s := p.fns[inv.Function]
	if s == nil {
		s = &invocationSeries{counts: make([]float64, int(p.cfg.History/time.Minute)), first: minute, last: minute}
		p.fns[inv.Function] = s
	}
	s.score(inv.Arrival)
	s.record(minute)
	s.invocations++
	s.busy += max(inv.End.Sub(inv.Arrival), 0)

	if !s.tried || minute-s.triedMinute >= int64(p.cfg.Refit/time.Minute) {
		s.fitted = p.fit(s, minute)
		s.tried, s.triedMinute = true, minute
	}
	w, ok := p.window(s, inv.End)
	if !ok {
		s.hasWindow = false
		return p.cfg.Fallback.Decide(inv)
	}
	s.lastWindow, s.windowFrom, s.hasWindow = w, inv.End, true
	if s.confidence < p.cfg.MinConfidence {
		return p.cfg.Fallback.Decide(inv)
	}
	return w
}

// Forget drops fn's history and forecast.
func (p *Predictive) Forget(fn string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.fns, fn)
}

// score updates the hit rate with whether arrival fell inside the last forecast window.
func (s *invocationSeries) score(arrival time.Time) {
	if !s.hasWindow {
		return
	}
	from := s.windowFrom.Add(s.lastWindow.PreWarm)
	hit := !arrival.Before(from) && !arrival.After(from.Add(s.lastWindow.KeepAlive))
	if s.lastWindow.KeepAlive == 0 {
		hit = false
	}
	const weight = 0.2
	s.confidence *= 1 - weight
	if hit {
		s.confidence += weight
	}
}

func (s *invocationSeries) record(minute int64) {
	n := int64(len(s.counts))
	if minute > s.last {
		for m := max(s.last+1, minute-n+1); m <= minute; m++ {
			s.counts[ringIndex(m, n)] = 0
		}
		s.last = minute
	}
	if minute > s.last-n { // arrivals older than the ring are dropped
		s.counts[ringIndex(minute, n)]++
	}
}

// ringIndex is minute's slot in a ring of n minutes (minutes before 1970 are negative).
func ringIndex(minute, n int64) int64 { return (minute%n + n) % n }

// fit recomputes s's forecast at minute now; it reports false if the history is too short
// or shows no period.
func (p *Predictive) fit(s *invocationSeries, now int64) bool {
	n := int64(len(s.counts))
	length := min(now-s.first+1, n)
	length -= length % minForecastHistory
	if length < minForecastHistory || s.invocations < 3 {
		return false
	}
	series := make([]float64, length)
	for i := range length {
		m := now - length + 1 + i
		if m <= s.last {
			series[i] = s.counts[ringIndex(m, n)]
		}
	}
	period := p.period(series)
	if period == 0 {
		return false // no timing to predict: the fallback decides
	}
	horizon := int(p.cfg.Horizon / time.Minute)
	s.forecast = slices.Grow(s.forecast[:0], horizon)[:horizon]
	// Average the past cycles at each phase; minute now+1+j is series index length+j.
	sums, counts := make([]float64, period), make([]float64, period)
	for i, v := range series {
		sums[i%period] += v
		counts[i%period]++
	}
	// The period must say when: its busiest phase at least twice the mean rate.
	busiest := 0.0
	for ph := range sums {
		busiest = max(busiest, sums[ph]/counts[ph])
	}
	if busiest < 2*stat.Mean(series, nil) {
		return false
	}
	for j := range s.forecast {
		phase := (int(length) + j) % period
		s.forecast[j] = sums[phase] / counts[phase]
	}
	s.fitMinute = now
	return true
}

// period returns the lag in minutes (≥ 2) at which series best repeats itself, or 0 when no
// lag up to a third of its length is a peak of the autocorrelation reaching MinPeriodicity. The autocorrelation comes from the
// power spectrum of the mean-removed series, zero-padded to twice its length so that lags
// do not wrap around.
func (p *Predictive) period(series []float64) int {
	n := len(series)
	mean := stat.Mean(series, nil)
	padded := make([]float64, 2*n)
	for i, v := range series {
		padded[i] = v - mean
	}
	fft := p.ffts[2*n]
	if fft == nil {
		fft = fourier.NewFFT(2 * n)
		p.ffts[2*n] = fft
	}
	coeff := fft.Coefficients(nil, padded)
	for k, c := range coeff {
		coeff[k] = complex(real(c)*real(c)+imag(c)*imag(c), 0)
	}
	acf := fft.Sequence(nil, coeff)
	if acf[0] <= 0 {
		return 0 // a constant series
	}
	// ρ(lag), each lag normalised by the number of pairs it sums over.
	rho := func(lag int) float64 { return acf[lag] / float64(n-lag) / (acf[0] / float64(n)) }
	// A period is a local peak of ρ (runs of busy minutes make ρ high at short lags too, but
	// falling). Multiples of the period correlate as well as the period: take the first
	// peak that comes close to the best.
	var peaks []int
	bestRho := 0.0
	for lag := 2; lag <= n/3; lag++ {
		if r := rho(lag); r >= p.cfg.MinPeriodicity && r > rho(lag-1) && r >= rho(lag+1) {
			peaks = append(peaks, lag)
			bestRho = max(bestRho, r)
		}
	}
	for _, lag := range peaks {
		if rho(lag) >= 0.9*bestRho {
			return lag
		}
	}
	return 0
}

// window turns s's forecast into a window counted from end, choosing the node class.
func (p *Predictive) window(s *invocationSeries, end time.Time) (Window, bool) {
	if !s.fitted {
		return Window{}, false
	}
	endMinute := end.Truncate(time.Minute).Unix() / 60
	start := -1
	// From the minute after the execution ended (forecast index j is minute fitMinute+1+j); the
	// rest of the current minute is covered by the lead before it.
	for j := max(endMinute-s.fitMinute, 0); j < int64(len(s.forecast)); j++ {
		if s.forecast[j] >= p.cfg.Threshold {
			start = int(j)
			break
		}
	}
	if start < 0 {
		return Window{}, false
	}
	stop := start
	for stop+1 < len(s.forecast) && s.forecast[stop+1] >= p.cfg.Threshold {
		stop++
	}
	minuteStart := func(j int) time.Time { return time.Unix((s.fitMinute+1+int64(j))*60, 0) }
	loadAt := minuteStart(start).Add(-p.cfg.Lead)
	unloadAt := minuteStart(stop + 1).Add(p.cfg.Slack)
	preWarm := max(loadAt.Sub(end), 0)
	keep := unloadAt.Sub(end) - preWarm
	if keep <= 0 {
		return Window{}, false
	}
	class, ok := p.chooseClass(s, keep)
	if !ok {
		return Window{PreWarm: preWarm}, true // warming costs more than it saves anywhere
	}
	return Window{PreWarm: preWarm, KeepAlive: keep, Class: class}, true
}

// chooseClass picks the class with the best utility: latency saved per unit of memory
// price over the window. (How likely the forecast is to hit scales every class alike, so it
// gates warming in Decide instead.) It reports false when no class saves latency.
func (p *Predictive) chooseClass(s *invocationSeries, keep time.Duration) (int, bool) {
	meanDuration := s.busy.Seconds() / float64(s.invocations)
	best, bestUtility := 0, 0.0
	for i, nc := range p.cfg.Classes {
		saved := p.cfg.ColdStart.Seconds() - (nc.Slowdown-1)*meanDuration
		utility := saved / (nc.Price * keep.Seconds())
		if saved > 0 && utility > bestUtility {
			best, bestUtility = i, utility
		}
	}
	return best, bestUtility > 0
}
