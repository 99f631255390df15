package policy

import (
	"errors"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

var t0 = time.Unix(1_700_000_040, 0) // a minute boundary

// feed passes invocations of fn arriving after the given idle times (each execution takes
// 1 s) to p and returns the window of the last one.
func feed(p Policy, fn string, idle ...time.Duration) Window {
	at := t0
	var w Window
	for i, d := range idle {
		if i > 0 {
			at = at.Add(d)
		}
		end := at.Add(time.Second)
		w = p.Decide(Invocation{Function: fn, Arrival: at, End: end})
		at = end
	}
	return w
}

func repeat(d time.Duration, n int) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = d
	}
	return out
}

func TestFixed(t *testing.T) {
	f, err := NewFixed(10 * time.Minute)
	if err != nil || f.Name() != "fixed-10m" || f.Decide(Invocation{}) != (Window{KeepAlive: 10 * time.Minute}) {
		t.Fatalf("fixed: %v %q %+v", err, f.Name(), f.Decide(Invocation{}))
	}
	if n := (Fixed{KeepAlive: 4 * time.Hour}).Name(); n != "fixed-4h" {
		t.Fatalf("name %q", n)
	}
	if _, err := NewFixed(-time.Second); !errors.Is(err, ErrConfig) {
		t.Fatalf("negative keep-alive: %v", err)
	}
}

func TestHybridWindowFromPercentiles(t *testing.T) {
	h, err := NewHybrid(HybridConfig{})
	if err != nil {
		t.Fatal(err)
	}
	// Every idle time 30m30s: head bin 30 (30m), tail bin 30 (ends at 31m).
	w := feed(h, "f", repeat(30*time.Minute+30*time.Second, 20)...)
	head, tail := 30*time.Minute, 31*time.Minute
	wantPre := time.Duration(float64(head) * 0.9)
	wantEnd := time.Duration(float64(tail) * 1.1)
	if w.PreWarm != wantPre || w.PreWarm+w.KeepAlive != wantEnd {
		t.Fatalf("window %+v, want pre-warm %v and unload at %v", w, wantPre, wantEnd)
	}
}

func TestHybridFallsBackWhileScarceOrFlat(t *testing.T) {
	fallback := Fixed{KeepAlive: 7 * time.Minute}
	h, _ := NewHybrid(HybridConfig{Fallback: fallback})
	if w := feed(h, "scarce", repeat(30*time.Minute, 4)...); w != fallback.Decide(Invocation{}) {
		t.Fatalf("scarce data: %+v", w)
	}
	// Idle times spread evenly over the whole range: a flat histogram, CV well below 2.
	var flat []time.Duration
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		flat = append(flat, time.Duration(rng.Int64N(int64(4*time.Hour))))
	}
	if w := feed(h, "flat", flat...); w != fallback.Decide(Invocation{}) {
		t.Fatalf("flat histogram: %+v", w)
	}
}

func TestHybridForecastsOutOfRangeIdleTimes(t *testing.T) {
	h, _ := NewHybrid(HybridConfig{})
	w := feed(h, "daily", repeat(6*time.Hour, 12)...)
	// AR forecast of a constant series is the constant: pre-warm at 90%, unload at 110%.
	if w.PreWarm < 5*time.Hour+23*time.Minute || w.PreWarm > 5*time.Hour+25*time.Minute || w.KeepAlive < 71*time.Minute || w.KeepAlive > 73*time.Minute {
		t.Fatalf("window %+v for a 6-hour idle time", w)
	}
}

func TestHybridConfigErrors(t *testing.T) {
	for _, cfg := range []HybridConfig{{Bin: time.Hour, Range: time.Minute}, {HeadPercentile: 50, TailPercentile: 10}, {Margin: 1.5}, {MaxOOB: 2}} {
		if _, err := NewHybrid(cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("%+v: err = %v", cfg, err)
		}
	}
}

func TestForecastIdle(t *testing.T) {
	if _, ok := ForecastIdle(nil); ok {
		t.Fatal("forecast from nothing")
	}
	if d, _ := ForecastIdle([]time.Duration{time.Hour}); d != time.Hour {
		t.Fatalf("one sample: %v", d)
	}
	// A series that follows an AR(2) recurrence exactly is forecast exactly.
	x := []float64{1, 5}
	for len(x) < 21 {
		n := len(x)
		x = append(x, 2+0.5*x[n-1]+0.3*x[n-2])
	}
	var series []time.Duration
	for _, v := range x[:20] {
		series = append(series, time.Duration(v*float64(time.Hour)))
	}
	want := time.Duration(x[20] * float64(time.Hour))
	if d, _ := ForecastIdle(series); d < want-time.Second || d > want+time.Second {
		t.Fatalf("AR(2) series: forecast %v, want %v", d, want)
	}
	// A constant-sum alternating series makes the fit singular: the mean is the forecast.
	var alt []time.Duration
	for i := range 20 {
		alt = append(alt, time.Duration(5+3*(i%2))*time.Hour)
	}
	if d, _ := ForecastIdle(alt); d != 6*time.Hour+30*time.Minute {
		t.Fatalf("alternating series: forecast %v, want the mean 6h30m", d)
	}
	// The forecast stays within the observed range widened by half.
	wild := []time.Duration{time.Hour, 100 * time.Hour, time.Hour, 100 * time.Hour, time.Hour, 100 * time.Hour, 2 * time.Hour, time.Hour, 300 * time.Hour}
	if d, _ := ForecastIdle(wild); d < 30*time.Minute || d > 450*time.Hour {
		t.Fatalf("forecast %v out of clamp", d)
	}
}

func TestPredictiveFindsPeriodAndFallsBack(t *testing.T) {
	p, err := NewPredictive(PredictiveConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var w Window
	for m := 0; m <= 600; m += 20 { // every 20 minutes, 30 s into the minute
		at := t0.Add(time.Duration(m)*time.Minute + 30*time.Second)
		w = p.Decide(Invocation{Function: "timer", Arrival: at, End: at.Add(time.Second)})
	}
	// Next arrival in minute 620: warm from its start less the 1-minute lead, unload after
	// its end plus 1 minute of slack, counted from the end of the last execution.
	end := 600*time.Minute + 31*time.Second
	if from := 619 * time.Minute; w.PreWarm != from-end || w.KeepAlive != 622*time.Minute-from {
		t.Fatalf("window %+v", w)
	}
	if w := feed(p, "new", time.Minute); w != (Fixed{KeepAlive: 10 * time.Minute}).Decide(Invocation{}) {
		t.Fatalf("no history: %+v, want the fallback", w)
	}
	if _, err := NewPredictive(PredictiveConfig{Classes: []NodeClass{{Name: "x", Price: 0, Slowdown: 1}}}); !errors.Is(err, ErrConfig) {
		t.Fatalf("free class accepted: %v", err)
	}
}

func TestReuseCanLend(t *testing.T) {
	r, err := NewReuse(Fixed{KeepAlive: time.Minute}, map[string][]string{
		"big":   {"python", "numpy", "pandas", "numpy"},
		"small": {"numpy", "python"},
		"other": {"node"},
		"none":  nil,
	})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		donor, recipient string
		want             bool
	}{{"big", "small", true}, {"small", "big", false}, {"big", "other", false}, {"big", "none", false}, {"none", "none", true}, {"small", "small", true}}
	for _, c := range cases {
		if got := r.CanLend(c.donor, c.recipient); got != c.want {
			t.Errorf("CanLend(%s, %s) = %v", c.donor, c.recipient, got)
		}
	}
	if r.Name() != "reuse+fixed-1m" || r.Decide(Invocation{}).KeepAlive != time.Minute {
		t.Fatalf("reuse does not defer to its base")
	}
	if _, err := NewReuse(nil, nil); !errors.Is(err, ErrConfig) {
		t.Fatal("nil base accepted")
	}
}

// TestPoliciesAreSafeForConcurrentUse runs many functions' invocations from goroutines; the
// race detector is the assertion, plus a sanity check of the windows.
func TestPoliciesAreSafeForConcurrentUse(t *testing.T) {
	h, _ := NewHybrid(HybridConfig{})
	p, _ := NewPredictive(PredictiveConfig{})
	for _, pol := range []Policy{h, p} {
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Go(func() {
				for i := range 300 {
					at := t0.Add(time.Duration(i) * 7 * time.Minute)
					w := pol.Decide(Invocation{Function: string(rune('a' + g%2)), Arrival: at, End: at.Add(time.Second)})
					if w.PreWarm < 0 || w.KeepAlive < 0 {
						t.Errorf("%s: negative window %+v", pol.Name(), w)
						return
					}
				}
			})
		}
		wg.Wait()
	}
}

func TestForgetDropsState(t *testing.T) {
	h, _ := NewHybrid(HybridConfig{})
	p, _ := NewPredictive(PredictiveConfig{})
	for _, pol := range []interface {
		Policy
		Forgetter
	}{h, p} {
		feed(pol, "f", repeat(30*time.Minute, 20)...)
		pol.Forget("f")
		// Forgotten: the next invocation is the function's first, so the fallback decides.
		if w := feed(pol, "f", time.Minute); w != (Window{KeepAlive: 10 * time.Minute}) {
			t.Errorf("%s after Forget: %+v", pol.Name(), w)
		}
	}
}

func TestPoliciesTakeAnyTime(t *testing.T) {
	h, _ := NewHybrid(HybridConfig{})
	p, _ := NewPredictive(PredictiveConfig{})
	for _, pol := range []Policy{h, p} {
		for _, at := range []time.Time{time.Unix(-1e10, 0), {}, time.Unix(1e11, 0), time.Unix(-5, 0)} {
			if w := pol.Decide(Invocation{Function: "f", Arrival: at, End: at.Add(-time.Hour)}); w.PreWarm < 0 || w.KeepAlive < 0 {
				t.Errorf("%s at %v: %+v", pol.Name(), at, w)
			}
		}
	}
}

func TestNodeClassCheck(t *testing.T) {
	for _, nc := range []NodeClass{{Price: 0, Slowdown: 1}, {Price: -1, Slowdown: 1}, {Price: 1, Slowdown: 0.5}, {Price: math.NaN(), Slowdown: 1}, {Price: 1, Slowdown: math.NaN()}} {
		if nc.Check() == nil {
			t.Errorf("%+v accepted", nc)
		}
	}
	if err := (NodeClass{Name: "ok", Price: 0.4, Slowdown: 1.5}).Check(); err != nil {
		t.Errorf("valid class refused: %v", err)
	}
}
