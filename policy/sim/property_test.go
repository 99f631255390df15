package sim

import (
	"context"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/obdproject/obd/policy"
	"github.com/obdproject/obd/policy/trace"
)

// TestFixedKeepAliveTradeOff checks, on random small traces, that a longer fixed keep-alive
// never gives more cold starts nor less wasted memory, that every invocation is counted, and
// that reuse never adds cold starts.
func TestFixedKeepAliveTradeOff(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		minutes := rapid.IntRange(1, 120).Draw(rt, "minutes")
		nfn := rapid.IntRange(1, 4).Draw(rt, "functions")
		var counts [][]int
		var total int64
		for i := range nfn {
			c := rapid.SliceOfN(rapid.IntRange(0, 3), minutes, minutes).Draw(rt, "counts"+string(rune('0'+i)))
			for _, n := range c {
				total += int64(n)
			}
			counts = append(counts, c)
		}
		tr := manualTrace(minutes, counts...)
		for i, pkgs := range [][]string{{"py", "np"}, {"py"}, {"py", "np", "pd"}, {"node"}}[:nfn] {
			tr.Packages[tr.Invocations[i].FunctionKey] = pkgs
		}
		seed := rapid.Uint64().Draw(rt, "seed")
		a := rapid.IntRange(0, 30).Draw(rt, "shorter")
		b := a + rapid.IntRange(0, 30).Draw(rt, "longer by")
		short := runFixed(rt, tr, time.Duration(a)*time.Minute, seed, false)
		long := runFixed(rt, tr, time.Duration(b)*time.Minute, seed, false)
		if short.Invocations != total || long.Invocations != total {
			rt.Fatalf("counted %d and %d invocations, trace has %d", short.Invocations, long.Invocations, total)
		}
		if long.ColdStarts > short.ColdStarts || long.WastedMBSeconds < short.WastedMBSeconds-1e-6 {
			rt.Fatalf("keep-alive %dm: %d cold, %.0f MB·s; %dm: %d cold, %.0f MB·s", a, short.ColdStarts, short.WastedMBSeconds, b, long.ColdStarts, long.WastedMBSeconds)
		}
		reuse := runFixed(rt, tr, time.Duration(a)*time.Minute, seed, true)
		if reuse.ColdStarts > short.ColdStarts || reuse.Invocations != total {
			rt.Fatalf("reuse: %d cold + %d reused; without: %d cold", reuse.ColdStarts, reuse.ReuseStarts, short.ColdStarts)
		}
	})
}

func runFixed(rt *rapid.T, tr *trace.Trace, keepAlive time.Duration, seed uint64, reuse bool) Result {
	var p policy.Policy = policy.Fixed{KeepAlive: keepAlive}
	if reuse {
		var err error
		if p, err = policy.NewReuse(p, tr.PackagesByName()); err != nil {
			rt.Fatal(err)
		}
	}
	r, err := Run(context.Background(), tr, p, Config{Seed: seed})
	if err != nil {
		rt.Fatal(err)
	}
	return r
}
