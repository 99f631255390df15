package probe

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/obdproject/obd/policy/sim"
	"github.com/obdproject/obd/policy/trace"
	"github.com/obdproject/obd/sandbox/sandboxapi"
)

// Modules are the standard-library modules the probe's functions import in place of a trace's
// packages (the image has no others): the trace's distinct packages are mapped onto them in
// sorted order, so which function's packages cover which is kept, and a function zygote
// really imports them.
var Modules = []string{"json", "decimal", "csv", "fractions", "statistics", "difflib", "textwrap", "email",
	"sqlite3", "html", "uuid", "random", "heapq", "bisect", "string", "base64", "hashlib", "zlib"}

// ProbeTrace returns a copy of t fit for a live replay: its packages mapped onto Modules
// (an error when it has more distinct packages), without durations and memory rows, so that
// the simulator uses Config.DefaultDuration and DefaultMemoryMB, which the probe sets from
// the live server.
func ProbeTrace(t *trace.Trace) (*trace.Trace, error) {
	distinct := map[string]bool{}
	for _, pkgs := range t.Packages {
		for _, p := range pkgs {
			distinct[p] = true
		}
	}
	names := slices.Sorted(maps.Keys(distinct))
	if len(names) > len(Modules) {
		return nil, fmt.Errorf("probe: trace has %d distinct packages, the probe maps at most %d", len(names), len(Modules))
	}
	module := map[string]string{}
	for i, n := range names {
		module[n] = Modules[i]
	}
	out := &trace.Trace{Minutes: t.Minutes, Invocations: slices.Clone(t.Invocations), Packages: map[trace.FunctionKey][]string{}}
	for k, pkgs := range t.Packages {
		var mods []string
		for _, p := range pkgs {
			mods = append(mods, module[p])
		}
		slices.Sort(mods)
		out.Packages[k] = slices.Compact(mods)
	}
	return out, nil
}

// Comparison is one live-against-simulated run of a trace under several policies.
type Comparison struct {
	Image    string
	Prefix   string   // of the functions' names
	Policies []string // as obd sim names them
	// Minute is the real time one trace minute lasts; the server must run its policies'
	// clock time.Minute/Minute times as fast (obd-lambda --policy-time-scale).
	Minute   time.Duration
	MemoryMB int64 // of every function; the simulator's memory too
	Seed     uint64
}

// Side is one policy's outcome, live or simulated, in trace time.
type Side struct {
	Invocations int64
	Starts      int64 // no idle instance of its own and none borrowed: the simulator's cold starts
	Reused      int64 // served by another function's idle instance
	PreWarmed   int64 // served by an instance its policy pre-warmed (live only)
	// WastedMBSeconds is memory × time instances sat loaded but idle, in trace seconds.
	WastedMBSeconds float64
	Errors          int64
}

// PolicyResult is a policy's live and simulated outcomes on the same arrivals.
type PolicyResult struct {
	Policy    string
	Live, Sim Side
	// LiveStarts and SimStarts are each function's starts, in the trace's order.
	LiveStarts, SimStarts []int64
}

// Timing is what the probe measured of the server and gave the simulator, in real time:
// median latencies seen by the client, and the server's mean time per invocation (from
// taking a sandbox to putting it back).
type Timing struct {
	StartP50, BorrowP50, HotP50 time.Duration
	ServerMean                  time.Duration
}

// Compare deploys, for each policy, a function per function of t (under that policy, named
// in t's order so that the server tries lenders in the simulator's order,
// importing its packages; t as ProbeTrace returns it), replays t's arrivals (sim.Arrivals)
// for all policies at once against the server, reads each function's counters when the
// trace ends, and runs the simulator on the same arrivals under each policy, with start,
// borrow and execution times as measured live (see Timing). The functions are deleted afterwards.
func Compare(ctx context.Context, c *sandboxapi.Client, t *trace.Trace, cmp Comparison) ([]PolicyResult, Timing, error) {
	cfg := sim.Config{Seed: cmp.Seed, InstancePerInvocation: true, MaxArrivalsPerMinute: 1 << 20,
		DefaultMemoryMB: float64(cmp.MemoryMB)}
	schedule, err := sim.Arrivals(t, cfg)
	if err != nil {
		return nil, Timing{}, err
	}
	packages := t.PackagesByName()
	var specs []sandboxapi.FunctionSpec
	var all [][]time.Duration
	for k, pol := range cmp.Policies {
		for i, inv := range t.Invocations {
			specs = append(specs, sandboxapi.FunctionSpec{Name: fmt.Sprintf("%s-%d-%04d", cmp.Prefix, k, i), Image: cmp.Image,
				Entry: "main.handler", MemoryMB: cmp.MemoryMB, Imports: packages[inv.String()], Policy: pol})
			all = append(all, schedule[i])
		}
	}
	names, err := DeploySpecs(ctx, c, specs)
	defer Remove(ctx, c, names)
	if err != nil {
		return nil, Timing{}, err
	}
	scale := float64(cmp.Minute) / float64(time.Minute)
	// Trace minutes start where the server's policy minutes do (policy/live): on a multiple
	// of Minute.
	start := time.Now().Truncate(cmp.Minute).Add(cmp.Minute)
	obs, err := replayFrom(ctx, c, names, all, scale, start)
	if err != nil {
		return nil, Timing{}, err
	}
	// Idle time is counted up to the trace's end, as the simulator counts it.
	select {
	case <-ctx.Done():
		return nil, Timing{}, ctx.Err()
	case <-time.After(time.Until(start.Add(time.Duration(t.Minutes) * cmp.Minute))):
	}
	stats := make([]sandboxapi.Stats, len(names))
	for i, n := range names {
		if stats[i], err = c.Stats(ctx, n); err != nil {
			return nil, Timing{}, fmt.Errorf("probe: stats of %s: %w", n, err)
		}
	}
	timing := measure(obs)
	var busy time.Duration
	var calls int64
	for _, st := range stats {
		busy += st.TotalTime
		calls += st.Invocations
	}
	if calls > 0 {
		timing.ServerMean = busy / time.Duration(calls)
	}
	// The simulator's timing model, from the server's side: an instance is busy for the
	// server's mean time per invocation (mostly hot ones), and a start or a borrow adds its
	// latency over a hot call's (the HTTP round trip, in both, cancels out).
	toTrace := func(d time.Duration) time.Duration { return max(time.Duration(float64(d)/scale), 1) }
	cfg.DefaultDuration = toTrace(timing.ServerMean)
	cfg.ColdStart = toTrace(timing.StartP50 - timing.HotP50)
	cfg.ReuseStart = toTrace(timing.BorrowP50 - timing.HotP50)

	n := len(t.Invocations)
	out := make([]PolicyResult, len(cmp.Policies))
	for k, pol := range cmp.Policies {
		r := PolicyResult{Policy: pol}
		for i := k * n; i < (k+1)*n; i++ {
			st := stats[i]
			r.Live.Invocations += st.Invocations
			r.Live.Errors += st.Errors
			r.Live.Starts += st.Cold + st.Warm
			r.LiveStarts = append(r.LiveStarts, st.Cold+st.Warm)
			r.Live.Reused += st.Borrowed
			r.Live.PreWarmed += st.PreWarmed
			r.Live.WastedMBSeconds += st.IdleMBSeconds / scale
		}
		p, err := sim.NewPolicy(pol, t, cfg)
		if err != nil {
			return nil, timing, err
		}
		res, err := sim.Run(ctx, t, p, cfg)
		if err != nil {
			return nil, timing, err
		}
		r.Sim = Side{Invocations: res.Invocations, Starts: res.ColdStarts, Reused: res.ReuseStarts, WastedMBSeconds: res.WastedMBSeconds}
		r.SimStarts = res.FunctionColdStarts
		out[k] = r
	}
	return out, timing, nil
}

// measure takes the median latencies of starts (cold and warm), borrowed and hot starts.
func measure(obs []Observation) Timing {
	lat := map[sandboxapi.StartPath][]time.Duration{}
	for _, o := range obs {
		if o.Err == nil {
			lat[o.Path] = append(lat[o.Path], o.Latency)
		}
	}
	return Timing{StartP50: median(append(lat[sandboxapi.Cold], lat[sandboxapi.Warm]...)),
		BorrowP50: median(lat[sandboxapi.Borrowed]), HotP50: median(lat[sandboxapi.Hot])}
}

// Remove deletes the functions named, logging nothing: a function already gone is fine.
func Remove(ctx context.Context, c *sandboxapi.Client, names []string) {
	for _, n := range names {
		delCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), callTimeout)
		c.Delete(delCtx, n)
		cancel()
	}
}

// Table formats results as a markdown table: per policy, live and simulated starts, reuse
// and wasted memory-time (GB·s of trace time), and the live figure's difference from the
// simulated one.
func Table(results []PolicyResult) string {
	var b strings.Builder
	b.WriteString("| policy | invocations | starts live | starts sim | Δ starts | reused live | reused sim | pre-warmed live | wasted GB·s live | wasted GB·s sim | Δ wasted | errors |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %s | %d | %d | %d | %.1f | %.1f | %s | %d |\n", r.Policy, r.Live.Invocations,
			r.Live.Starts, r.Sim.Starts, Diff(float64(r.Live.Starts), float64(r.Sim.Starts)), r.Live.Reused, r.Sim.Reused,
			r.Live.PreWarmed, r.Live.WastedMBSeconds/1024, r.Sim.WastedMBSeconds/1024,
			Diff(r.Live.WastedMBSeconds, r.Sim.WastedMBSeconds), r.Live.Errors)
	}
	return b.String()
}

// Diff is live's relative difference from sim, e.g. "+4.2%".
func Diff(live, sim float64) string {
	if sim == 0 {
		if live == 0 {
			return "0%"
		}
		return "n/a"
	}
	return fmt.Sprintf("%+.1f%%", 100*(live-sim)/sim)
}
