// Package policy decides when function sandboxes are kept warm: how long an idle instance stays
// loaded after an invocation, and whether to unload it and load it again just before the next
// invocation is expected (pre-warm). It sits beside the read path of docs/DESIGN.md, at its top box
// ("container / sandbox"): the sandbox server asks a Policy what to do with an instance
// each time an invocation finishes, and the trace-driven simulator (package policy/sim) asks the
// same Policy while replaying a trace (package policy/trace).
//
// Policies:
//   - Fixed: keep every instance loaded for a fixed time after each invocation (the baseline;
//     10 minutes as common platforms do).
//   - Hybrid: the hybrid histogram policy of Shahrad et al. (ATC'20), per function.
//   - Predictive: IceBreaker-style warm-up from an FFT forecast of each function's per-minute
//     invocation series, choosing the node class with the best utility.
//   - Reuse: Pagurus-style cross-function reuse on top of any policy: an idle instance of one
//     function can serve another whose packages it already covers.
//
// A server calls Decide each time an invocation finishes and applies the returned Window to
// the now idle instance; with PreWarm > 0 it unloads the instance and loads one again when
// PreWarm has passed. A Policy keeps per-function state and is safe for concurrent use.
package policy

import (
	"errors"
	"time"
)

// Invocation is one finished invocation of a function, as the policy learns it.
type Invocation struct {
	Function string    // the function's identity (any string unique per function)
	Arrival  time.Time // when the request arrived
	End      time.Time // when its execution finished (≥ Arrival)
}

// Window is what to do with a function's instance once an invocation has finished and the
// instance is idle. The instance stays loaded from the pre-warm point for KeepAlive, then it
// is unloaded unless another invocation arrived first:
//
//	PreWarm == 0: keep the instance loaded for KeepAlive after the execution ends.
//	PreWarm  > 0: unload it right after the execution; load it again PreWarm after the end
//	              and keep it loaded for KeepAlive from that point.
//
// KeepAlive == 0 means the instance is unloaded right away (and never pre-warmed).
type Window struct {
	PreWarm   time.Duration
	KeepAlive time.Duration
	// Class is the node class the (pre-warmed) instance should be placed on, an index into
	// the deployment's classes; 0 is the default class, the only one on a single node.
	Class int
}

// Policy decides the keep-alive window of each function's instances.
type Policy interface {
	// Name identifies the policy in reports, e.g. "fixed-10m".
	Name() string
	// Decide records a finished invocation and returns the window for the idle time that
	// follows it. Invocations of one function should come in order of arrival; one that
	// arrived before the previous one ended counts as no idle time.
	Decide(inv Invocation) Window
}

// Lender is implemented by policies that let an idle instance of one function serve another
// function (cross-function reuse). The server or simulator asks it on what would otherwise be
// a cold start of recipient.
type Lender interface {
	// CanLend reports whether an idle instance of donor already holds everything recipient
	// needs, so it can be repurposed instead of starting a new instance.
	CanLend(donor, recipient string) bool
}

// Forgetter is implemented by policies that keep per-function state; a server calls Forget
// when a function is deleted so that the state does not outlive it.
type Forgetter interface {
	Forget(fn string)
}

// ErrConfig marks an invalid policy configuration.
var ErrConfig = errors.New("policy: invalid configuration")
