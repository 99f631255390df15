// Package sim replays serverless invocation traces (package policy/trace) against keep-alive
// policies (package policy) under a cost model, and reports cold-start rate, wasted memory-time
// and added latency per policy. It predicts what the sandbox server, at the top box of
// docs/DESIGN.md's read path ("container / sandbox"), would do with the same policy and trace.
//
// The model follows Shahrad et al. (ATC'20): each function has at most one instance, which
// serves concurrent invocations (Config.InstancePerInvocation instead gives each concurrent
// invocation its own, as the sandbox server does). An invocation is a cold start when no
// instance of its function can take it; wasted memory-time is the function's memory times
// the time its instances are loaded but idle. Memory is the application's average allocated memory (so every function
// of an application counts it; the paper keeps one instance per application instead).
//
// Time is exact, event by event: the invocations a trace counts in one minute get seeded
// random arrival times within that minute, and durations are drawn from each function's
// duration percentiles. Minutes with more than MaxArrivalsPerMinute invocations arrive as that
// many groups of simultaneous invocations, which keeps the cost per trace bounded. Functions
// are replayed together in time order, so a cold start can borrow another function's idle
// instance when the policy is a policy.Lender.
package sim

import (
	"cmp"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/obdproject/obd/policy"
	"github.com/obdproject/obd/policy/trace"
)

// Config is the cost model and the replay's knobs. A zero field takes the default in its
// comment.
type Config struct {
	Seed                 uint64        // arrival spreading and duration draws
	ColdStart            time.Duration // latency a cold start adds; default 1s
	ReuseStart           time.Duration // latency of repurposing another function's instance; default 250ms
	DefaultMemoryMB      float64       // for applications without a memory row; default 150
	DefaultDuration      time.Duration // for functions without a durations row; default 1s
	MaxArrivalsPerMinute int           // default 60
	// InstancePerInvocation gives each concurrent invocation its own instance, as the
	// sandbox server does; by default one instance per function serves all of them, as in
	// the paper's model. A group of simultaneous invocations (see MaxArrivalsPerMinute)
	// still takes one instance.
	InstancePerInvocation bool
	// Classes are the node classes a policy may place instances on (policy.Window.Class);
	// memory-time on a class costs its Price and executions take Slowdown times longer.
	// Default: one class of price 1 and slowdown 1.
	Classes []policy.NodeClass
}

func (c *Config) setDefaults() error {
	if c.ColdStart == 0 {
		c.ColdStart = time.Second
	}
	if c.ReuseStart == 0 {
		c.ReuseStart = 250 * time.Millisecond
	}
	if c.DefaultMemoryMB == 0 {
		c.DefaultMemoryMB = 150
	}
	if c.DefaultDuration == 0 {
		c.DefaultDuration = time.Second
	}
	if c.MaxArrivalsPerMinute == 0 {
		c.MaxArrivalsPerMinute = 60
	}
	if len(c.Classes) == 0 {
		c.Classes = []policy.NodeClass{{Name: "default", Price: 1, Slowdown: 1}}
	}
	if c.ColdStart < 0 || c.ReuseStart < 0 || c.DefaultMemoryMB < 0 || c.DefaultDuration < 0 || c.MaxArrivalsPerMinute < 1 {
		return fmt.Errorf("%w: negative cost or arrivals per minute below 1", ErrConfig)
	}
	for _, nc := range c.Classes {
		if err := nc.Check(); err != nil {
			return fmt.Errorf("%w: %w", ErrConfig, err)
		}
	}
	return nil
}

// ErrConfig marks an invalid simulator configuration or a policy decision outside it.
var ErrConfig = errors.New("sim: invalid configuration")

// Result is one policy's outcome on one trace.
type Result struct {
	Policy      string
	Functions   int
	Invocations int64
	ColdStarts  int64 // invocations that found no loaded instance and borrowed none
	ReuseStarts int64 // would-be cold starts served by another function's idle instance
	// WastedMBSeconds is memory × time of loaded idle instances; WastedCost weighs it by
	// the price of the node class each instance sat on.
	WastedMBSeconds float64
	WastedCost      float64
	// LatencyP50 and LatencyP99 are percentiles of the latency each invocation had on top
	// of a warm execution on the default class: start-up and slower classes.
	LatencyP50, LatencyP99 time.Duration
	// FunctionColdP75 is the 75th percentile over functions of each function's cold-start
	// rate, the paper's per-application view.
	FunctionColdP75 float64
	// FunctionColdStarts are each function's cold starts, in the trace's order.
	FunctionColdStarts []int64
}

// ColdStartRate is the fraction of invocations that were cold starts.
func (r Result) ColdStartRate() float64 {
	if r.Invocations == 0 {
		return 0
	}
	return float64(r.ColdStarts) / float64(r.Invocations)
}

// function is one function's replay state.
type function struct {
	name     string
	counts   []int
	memoryMB float64
	duration []float64  // duration percentiles, ms, at trace.DurationPercentiles
	arrivals *rand.Rand // spreads a minute's invocations; see Arrivals
	runs     *rand.Rand // draws durations
	donors   []int      // functions whose idle instances may serve this one

	// pending arrivals of the current minute, ascending offsets from the trace start
	pending []arrival
	minute  int

	invocations, coldStarts int64

	// Loaded instances (and ones whose pre-warm is pending); at most one unless
	// Config.InstancePerInvocation.
	instances []*instance
}

// instance is one instance of a function: starting until readyAt, busy until busyUntil,
// then idle under window.
type instance struct {
	class     int
	readyAt   time.Duration
	busyUntil time.Duration
	window    policy.Window
}

type arrival struct {
	at    time.Duration
	count int
}

// Run replays t against p and returns p's result. p must be fresh: policies keep state.
func Run(ctx context.Context, t *trace.Trace, p policy.Policy, cfg Config) (Result, error) {
	if err := cfg.setDefaults(); err != nil {
		return Result{}, err
	}
	if err := t.Validate(); err != nil {
		return Result{}, err
	}
	fns := prepare(t, cfg)
	if lender, ok := p.(policy.Lender); ok {
		findDonors(fns, lender)
	}
	r := replay{cfg: cfg, policy: p, fns: fns, latency: newLatencyHistogram()}
	if err := r.run(ctx, time.Duration(t.Minutes)*time.Minute); err != nil {
		return Result{}, fmt.Errorf("sim: policy %s: %w", p.Name(), err)
	}
	return r.result(), nil
}

func prepare(t *trace.Trace, cfg Config) []*function {
	memory := make(map[trace.AppKey]float64, len(t.Memory))
	for _, m := range t.Memory {
		memory[m.AppKey] = m.AverageMB
	}
	durations := make(map[trace.FunctionKey][]float64, len(t.Durations))
	for _, d := range t.Durations {
		durations[d.FunctionKey] = d.Percentiles[:]
	}
	fns := make([]*function, len(t.Invocations))
	for i, inv := range t.Invocations {
		f := &function{name: inv.String(), counts: inv.Counts, minute: -1,
			arrivals: arrivalRNG(cfg.Seed, i), runs: rand.New(rand.NewPCG(cfg.Seed, uint64(2*i+1)))}
		f.memoryMB = cfg.DefaultMemoryMB
		if mb, ok := memory[inv.AppKey()]; ok {
			f.memoryMB = mb
		}
		f.duration = durations[inv.FunctionKey]
		fns[i] = f
	}
	return fns
}

// findDonors lists, for each function, the functions whose instances lender lets serve it.
// Policies that expose packages are indexed by package, so only plausible pairs are asked.
func findDonors(fns []*function, lender policy.Lender) {
	lister, ok := lender.(interface{ Packages(fn string) []string })
	if !ok {
		for i, f := range fns {
			for j, d := range fns {
				if i != j && lender.CanLend(d.name, f.name) {
					f.donors = append(f.donors, j)
				}
			}
		}
		return
	}
	holders := make(map[string][]int)
	for j, d := range fns {
		for _, pkg := range lister.Packages(d.name) {
			holders[pkg] = append(holders[pkg], j)
		}
	}
	for i, f := range fns {
		var rarest []int
		for n, pkg := range lister.Packages(f.name) {
			if h := holders[pkg]; n == 0 || len(h) < len(rarest) {
				rarest = h
			}
		}
		for _, j := range rarest {
			if i != j && lender.CanLend(fns[j].name, f.name) {
				f.donors = append(f.donors, j)
			}
		}
	}
}

// replay is one run's state.
type replay struct {
	cfg     Config
	policy  policy.Policy
	fns     []*function
	latency *latencyHistogram

	invocations, coldStarts, reuseStarts int64
	wastedMBs, wastedCost                float64
}

// epoch is the wall-clock time of the trace's first minute, aligned to a minute.
var epoch = time.Unix(0, 0).UTC()

func (r *replay) run(ctx context.Context, end time.Duration) error {
	var q arrivalQueue
	for i, f := range r.fns {
		if f.advance(r.cfg.MaxArrivalsPerMinute) {
			q = append(q, nextArrival{at: f.pending[0].at, id: i})
		}
	}
	heap.Init(&q)
	for events := 0; len(q) > 0; events++ {
		if events%(1<<16) == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		id := q[0].id
		f := r.fns[id]
		a := f.pending[0]
		f.pending = f.pending[1:]
		if err := r.arrive(id, a); err != nil {
			return err
		}
		if len(f.pending) > 0 || f.advance(r.cfg.MaxArrivalsPerMinute) {
			q[0].at = f.pending[0].at
			heap.Fix(&q, 0)
		} else {
			heap.Pop(&q)
		}
	}
	for _, f := range r.fns {
		for _, inst := range f.instances {
			r.charge(inst, f.memoryMB, end)
		}
	}
	return nil
}

func arrivalRNG(seed uint64, function int) *rand.Rand {
	return rand.New(rand.NewPCG(seed, uint64(2*function)))
}

// Arrivals returns the arrival times, from the start of the trace, that Run gives the
// invocations of each function of t under cfg's seed (a group of simultaneous invocations
// appears once per invocation). A live replay of the same schedule (package policy/probe)
// can so be compared with the simulation.
func Arrivals(t *trace.Trace, cfg Config) ([][]time.Duration, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	out := make([][]time.Duration, len(t.Invocations))
	for i, inv := range t.Invocations {
		f := &function{counts: inv.Counts, minute: -1, arrivals: arrivalRNG(cfg.Seed, i)}
		for f.advance(cfg.MaxArrivalsPerMinute) {
			for _, a := range f.pending {
				for range a.count {
					out[i] = append(out[i], a.at)
				}
			}
		}
	}
	return out, nil
}

// advance fills f.pending with the next minute that has invocations; false at the end.
func (f *function) advance(maxGroups int) bool {
	for f.minute++; f.minute < len(f.counts); f.minute++ {
		n := f.counts[f.minute]
		if n == 0 {
			continue
		}
		groups := min(n, maxGroups)
		f.pending = f.pending[:0]
		for g := range groups {
			size := n / groups
			if g < n%groups {
				size++
			}
			at := time.Duration(f.minute)*time.Minute + time.Duration(f.arrivals.Int64N(int64(time.Minute)))
			f.pending = append(f.pending, arrival{at: at, count: size})
		}
		slices.SortFunc(f.pending, func(a, b arrival) int { return cmp.Compare(a.at, b.at) })
		return true
	}
	return false
}

// idle measures inst's idle loaded time from its last execution up to at, and reports
// whether it is loaded (or busy) at at and on which class. It does not change inst.
func (inst *instance) idle(memoryMB float64, at time.Duration) (loaded bool, wasteMBs float64, class int) {
	if at < inst.busyUntil {
		return true, 0, inst.class
	}
	w := inst.window
	from := inst.busyUntil + w.PreWarm
	until := from + w.KeepAlive
	class = inst.class
	if w.PreWarm > 0 {
		class = w.Class
	}
	loadedFor := min(at, until) - from
	if loadedFor <= 0 {
		return false, 0, class
	}
	return at < until, memoryMB * loadedFor.Seconds(), class
}

// charge books inst's idle time up to at and reports whether it is still loaded; a loaded
// instance is then taken to be in use from at (so no idle time is booked twice).
func (r *replay) charge(inst *instance, memoryMB float64, at time.Duration) (loaded bool) {
	loaded, waste, class := inst.idle(memoryMB, at)
	r.wastedMBs += waste
	r.wastedCost += waste * r.cfg.Classes[class].Price
	if loaded && at >= inst.busyUntil {
		inst.class, inst.busyUntil = class, at
	}
	return loaded
}

// take returns the instance of f that serves an arrival at at, its idle time booked, or
// nil. With one instance per function a busy instance serves too; with an instance per
// invocation only an idle one does, the most recently used first (as the sandbox server
// picks). Instances no longer loaded are booked and dropped on the way.
func (r *replay) take(f *function, at time.Duration) *instance {
	var best *instance
	kept := f.instances[:0]
	for _, inst := range f.instances {
		if loaded, _, _ := inst.idle(f.memoryMB, at); !loaded {
			r.charge(inst, f.memoryMB, at)
			continue
		}
		kept = append(kept, inst)
		if r.cfg.InstancePerInvocation && at < inst.busyUntil {
			continue
		}
		if best == nil || inst.busyUntil > best.busyUntil {
			best = inst
		}
	}
	clear(f.instances[len(kept):])
	f.instances = kept
	if best != nil {
		r.charge(best, f.memoryMB, at)
	}
	return best
}

// arrive replays a group of simultaneous invocations of function id.
func (r *replay) arrive(id int, a arrival) error {
	f := r.fns[id]
	var startup time.Duration
	inst := r.take(f, a.at)
	switch {
	case inst != nil:
		startup = max(inst.readyAt-a.at, 0) // may still be starting for an earlier arrival
	case r.borrow(f, a.at):
		inst = f.instances[len(f.instances)-1]
		startup = r.cfg.ReuseStart
		r.reuseStarts++
	default:
		inst = &instance{busyUntil: a.at}
		f.instances = append(f.instances, inst)
		startup = r.cfg.ColdStart
		r.coldStarts++
		f.coldStarts++
	}
	start := a.at + startup
	inst.readyAt = max(inst.readyAt, start)
	// One draw stands for the whole group: its invocations arrived together and run alike.
	base := f.drawDuration(r.cfg.DefaultDuration)
	run := time.Duration(float64(base) * r.cfg.Classes[inst.class].Slowdown)
	end := start + run
	inst.busyUntil = max(inst.busyUntil, end)
	r.latency.add(startup+run-base, int64(a.count))
	w := r.policy.Decide(policy.Invocation{Function: f.name, Arrival: epoch.Add(a.at), End: epoch.Add(end)})
	if w.Class < 0 || w.Class >= len(r.cfg.Classes) || w.PreWarm < 0 || w.KeepAlive < 0 {
		return fmt.Errorf("%w: window %+v for %s (node classes: %d)", ErrConfig, w, f.name, len(r.cfg.Classes))
	}
	inst.window = w
	f.invocations += int64(a.count)
	r.invocations += int64(a.count)
	return nil
}

// borrow moves an idle instance of one of f's donors, loaded at at, to the end of
// f.instances; it reports false when no donor has one.
func (r *replay) borrow(f *function, at time.Duration) bool {
	for _, j := range f.donors {
		d := r.fns[j]
		for k, inst := range d.instances {
			if loaded, _, _ := inst.idle(d.memoryMB, at); !loaded || at < inst.busyUntil {
				continue
			}
			r.charge(inst, d.memoryMB, at)
			d.instances = slices.Delete(d.instances, k, k+1)
			inst.readyAt = at
			f.instances = append(f.instances, inst)
			return true
		}
	}
	return false
}

// drawDuration draws an execution time from f's duration percentiles (linear between them).
func (f *function) drawDuration(def time.Duration) time.Duration {
	if len(f.duration) == 0 {
		return def
	}
	u := f.runs.Float64() * 100
	ps := trace.DurationPercentiles
	for i := 1; i < len(ps); i++ {
		if u <= ps[i] || i == len(ps)-1 {
			lo, hi := f.duration[i-1], f.duration[i]
			ms := lo + (hi-lo)*(u-ps[i-1])/(ps[i]-ps[i-1])
			return time.Duration(ms * float64(time.Millisecond))
		}
	}
	return def
}

func (r *replay) result() Result {
	res := Result{Policy: r.policy.Name(), Functions: len(r.fns), Invocations: r.invocations,
		ColdStarts: r.coldStarts, ReuseStarts: r.reuseStarts, WastedMBSeconds: r.wastedMBs, WastedCost: r.wastedCost,
		LatencyP50: r.latency.quantile(0.50), LatencyP99: r.latency.quantile(0.99)}
	var rates []float64
	for _, f := range r.fns {
		res.FunctionColdStarts = append(res.FunctionColdStarts, f.coldStarts)
		if f.invocations > 0 {
			rates = append(rates, float64(f.coldStarts)/float64(f.invocations))
		}
	}
	res.FunctionColdP75 = quantile(rates, 0.75)
	return res
}

// quantile is the q-quantile of values (nearest rank); it sorts values.
func quantile(values []float64, q float64) float64 {
	if len(values) == 0 {
		return 0
	}
	slices.Sort(values)
	return values[min(int(math.Ceil(q*float64(len(values))))-1, len(values)-1)]
}

// nextArrival is a function's next pending arrival, kept in the queue itself so that
// ordering the queue touches no function state.
type nextArrival struct {
	at time.Duration
	id int
}

// arrivalQueue is a min-heap of functions by next arrival (ties by index, for determinism).
type arrivalQueue []nextArrival

func (q arrivalQueue) Len() int { return len(q) }
func (q arrivalQueue) Less(i, j int) bool {
	return q[i].at < q[j].at || q[i].at == q[j].at && q[i].id < q[j].id
}
func (q arrivalQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *arrivalQueue) Push(x any)   { *q = append(*q, x.(nextArrival)) }
func (q *arrivalQueue) Pop() any {
	x := (*q)[len(*q)-1]
	*q = (*q)[:len(*q)-1]
	return x
}
