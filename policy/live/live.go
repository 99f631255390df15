// Package live serves package policy's keep-alive and pre-warm policies to the running sandbox
// server (cmd/obd-lambda, package sandbox): it sits beside the top box of docs/DESIGN.md's
// read path ("container / sandbox"), between the policies and the engine. Policies are named
// as `obd sim` names them (package policy/sim: "fixed-10m", "hybrid", "predictive",
// "reuse+hybrid"), so the server and the simulator run the same code on the same names.
//
// A Policy here satisfies sandbox.Policy without importing package sandbox (the interface
// speaks only standard types), and may run policies on a scaled clock: with Scale s, a policy
// sees s seconds of time pass per real second, and its windows come back shortened s times.
// That lets a trace compressed in time (policy/probe replays a trace minute in a second or
// two) meet policies that think in minutes (the hybrid histogram's 1-minute bins, the
// predictive policy's per-minute series) as it would at full length.
package live

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/obdproject/obd/policy"
	"github.com/obdproject/obd/policy/sim"
	"github.com/obdproject/obd/policy/trace"
)

// Policy is one policy instance as the sandbox server asks it, shared by every function
// registered under its name (the policy keeps state per function).
type Policy struct {
	p     policy.Policy
	clock *clock
}

// Name is the policy's name in `obd sim`'s reports, e.g. "reuse+hybrid".
func (p *Policy) Name() string { return p.p.Name() }

// Decide records an invocation of fn and returns the pre-warm and keep-alive of the window
// that follows it, in real time. The node class a policy may choose is not applied: a
// server is one node.
func (p *Policy) Decide(fn string, arrival, end time.Time) (preWarm, keepAlive time.Duration) {
	w := p.p.Decide(policy.Invocation{Function: fn, Arrival: p.clock.virtual(arrival), End: p.clock.virtual(end)})
	return p.clock.real(w.PreWarm), p.clock.real(w.KeepAlive)
}

// Forget drops fn's state in the policy.
func (p *Policy) Forget(fn string) {
	if f, ok := p.p.(policy.Forgetter); ok {
		f.Forget(fn)
	}
}

// Lends reports whether the policy is a cross-function reuse policy (policy.Lender). Which
// function may borrow from which is the server's to decide: it knows their images and
// packages, the policy's package map is the simulator's.
func (p *Policy) Lends() bool {
	_, ok := p.p.(policy.Lender)
	return ok
}

// clock maps real time to a policy's time: from origin on, scale times as fast.
type clock struct {
	origin time.Time
	scale  float64
}

// virtual is real time t on the policy's clock, which starts at the Unix epoch at origin (as
// the simulator's trace time does at the trace's start).
func (c *clock) virtual(t time.Time) time.Time {
	return time.Unix(0, 0).Add(time.Duration(float64(t.Sub(c.origin)) * c.scale))
}

// real is policy duration d in real time.
func (c *clock) real(d time.Duration) time.Duration { return time.Duration(float64(d) / c.scale) }

// Policies builds and keeps the server's policies: one instance per name.
type Policies struct {
	def   string
	clock *clock
	mu    sync.Mutex
	by    map[string]*Policy
}

// ErrConfig marks an invalid policy name or scale.
var ErrConfig = errors.New("live: invalid policy configuration")

// New returns the policies of a server whose functions are under policy def unless they name
// another, on a clock scale times as fast as real time from origin, rounded down to a
// multiple of time.Minute/scale (1: real time).
func New(def string, scale float64, origin time.Time) (*Policies, error) {
	if !(scale > 0) || scale > 1e6 {
		return nil, fmt.Errorf("%w: time scale %v must be above 0 and at most 1e6", ErrConfig, scale)
	}
	// The policies' minutes (the predictive policy counts invocations per minute) then start
	// on multiples of time.Minute/scale of real time, where a replay can start its own.
	origin = origin.Truncate(time.Duration(float64(time.Minute) / scale))
	ps := &Policies{def: def, clock: &clock{origin: origin, scale: scale}, by: map[string]*Policy{}}
	if _, err := ps.Get(""); err != nil {
		return nil, err
	}
	return ps, nil
}

// Get returns the policy named spec, "" for the default, made on first use.
func (ps *Policies) Get(spec string) (*Policy, error) {
	if spec == "" {
		spec = ps.def
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if p, ok := ps.by[spec]; ok {
		return p, nil
	}
	// The simulator's names, with its default cost model; reuse gets no package map: the
	// server decides who covers whom.
	p, err := sim.NewPolicy(spec, &trace.Trace{}, sim.Config{})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	lp := &Policy{p: p, clock: ps.clock}
	ps.by[spec] = lp
	return lp, nil
}
