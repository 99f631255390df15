package live

import (
	"errors"
	"math"
	"testing"
	"time"

	"pgregory.net/rapid"
)

// TestScaledClockMatchesPolicy checks, on random invocation sequences, that a policy served
// on a clock s times as fast returns the windows the same policy returns for the same
// invocations on the trace's own clock, shortened s times: a compressed replay meets the
// policy as the full-length trace does.
func TestScaledClockMatchesPolicy(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		spec := rapid.SampledFrom([]string{"fixed-10m", "hybrid", "reuse+hybrid", "predictive"}).Draw(rt, "policy")
		scale := rapid.SampledFrom([]float64{1, 30, 60, 120}).Draw(rt, "scale")
		origin := time.Unix(1_700_000_000, 0)
		ps, err := New(spec, scale, origin)
		if err != nil {
			rt.Fatal(err)
		}
		served, err := ps.Get("")
		if err != nil {
			rt.Fatal(err)
		}
		ref, err := New(spec, 1, time.Unix(0, 0))
		if err != nil {
			rt.Fatal(err)
		}
		direct, _ := ref.Get("")
		gaps := rapid.SliceOfN(rapid.IntRange(0, 180), 1, 40).Draw(rt, "gaps (trace minutes)")
		var at time.Duration // trace time since the start
		for i, g := range gaps {
			at += time.Duration(g) * time.Minute
			run := time.Duration(rapid.IntRange(1, 5000).Draw(rt, "run ms")) * time.Millisecond
			realAt := origin.Add(time.Duration(float64(at) / scale))
			realEnd := realAt.Add(time.Duration(float64(run) / scale))
			pw, ka := served.Decide("f", realAt, realEnd)
			wpw, wka := direct.Decide("f", time.Unix(0, 0).Add(at), time.Unix(0, 0).Add(at+run))
			// Durations round to the nanosecond on the way; a window of minutes may be off by
			// a few nanoseconds per scaling.
			if !near(float64(pw)*scale, float64(wpw)) || !near(float64(ka)*scale, float64(wka)) {
				rt.Fatalf("invocation %d: served window %v+%v at scale %v, the policy's %v+%v", i, pw, ka, scale, wpw, wka)
			}
			at += run
		}
	})
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e3+1e-9*math.Abs(b) }

func TestPolicies(t *testing.T) {
	ps, err := New("fixed-10m", 60, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	def, _ := ps.Get("")
	if pw, ka := def.Decide("f", time.Now(), time.Now()); pw != 0 || ka != 10*time.Second {
		t.Errorf("fixed-10m at 60x: pre-warm %v, keep-alive %v; want 0, 10s", pw, ka)
	}
	if again, _ := ps.Get("fixed-10m"); again != def {
		t.Error("the default and its name are two instances")
	}
	reuse, err := ps.Get("reuse+fixed-1m")
	if err != nil || !reuse.Lends() || def.Lends() {
		t.Errorf("reuse+fixed-1m: %v; lends %v, fixed lends %v", err, reuse != nil && reuse.Lends(), def.Lends())
	}
	h, _ := ps.Get("hybrid")
	h.Forget("f") // a no-op for a function it never saw, and safe
	for _, bad := range []string{"nonesuch", "fixed-x", "fixed--1m", "reuse+"} {
		if _, err := ps.Get(bad); !errors.Is(err, ErrConfig) {
			t.Errorf("policy %q: %v, want ErrConfig", bad, err)
		}
	}
	for _, scale := range []float64{0, -1, math.NaN(), 1e9} {
		if _, err := New("hybrid", scale, time.Now()); !errors.Is(err, ErrConfig) {
			t.Errorf("scale %v: %v, want ErrConfig", scale, err)
		}
	}
	if _, err := New("nonesuch", 1, time.Now()); !errors.Is(err, ErrConfig) {
		t.Errorf("unknown default: %v", err)
	}
}
