package sandbox

import (
	"fmt"
	"slices"
	"time"
)

// Policy decides how long a function's idle sandboxes stay in the handler cache and when
// one is started ahead of the next invocation. Package policy's policies (fixed, hybrid
// histogram, predictive, cross-function reuse) serve it through policy/live; the interface
// speaks only standard types, so neither side imports the other. Implementations keep state
// per function and are safe for concurrent use.
type Policy interface {
	// Decide records an invocation of fn, from its arrival to its result, and returns what
	// to do with its sandbox, now idle: with preWarm 0, keep it in the handler cache for
	// keepAlive; with preWarm > 0, destroy it now, start a new one preWarm from now and keep
	// that one for keepAlive. keepAlive 0: destroy it, start none.
	Decide(fn string, arrival, end time.Time) (preWarm, keepAlive time.Duration)
	// Forget drops what the policy holds of fn (it was deleted).
	Forget(fn string)
	// Lends reports whether it is a cross-function reuse policy: an idle sandbox of one
	// function under it may be lent to another function under the same policy whose image
	// and packages the sandbox already holds (see covers).
	Lends() bool
}

// fixedPolicy keeps every idle sandbox for the same time: Config.KeepAlive, the policy of
// every function when Config.Policies is nil.
type fixedPolicy time.Duration

func (f fixedPolicy) Decide(string, time.Time, time.Time) (time.Duration, time.Duration) {
	return 0, max(time.Duration(f), 0)
}
func (fixedPolicy) Forget(string) {}
func (fixedPolicy) Lends() bool   { return false }

// policyFor resolves a function's policy spec ("" is the server's default).
func (m *Manager) policyFor(spec string) (Policy, error) {
	if m.cfg.Policies == nil {
		if spec != "" {
			return nil, fmt.Errorf("policy %q: this server keeps idle sandboxes for a fixed %v and has no other policies", spec, m.cfg.KeepAlive)
		}
		return fixedPolicy(m.cfg.KeepAlive), nil
	}
	p, err := m.cfg.Policies(spec)
	if err != nil {
		return nil, fmt.Errorf("policy %q: %w", spec, err)
	}
	if p == nil {
		return nil, fmt.Errorf("policy %q: none", spec)
	}
	return p, nil
}

// covers reports whether an idle sandbox of donor may serve recipient (Pagurus-style
// cross-function reuse): both are under the same lending policy, the sandbox's root is of
// the same image, and its interpreter already imported every module (and has every
// install-cache package on its path) recipient's own sandboxes would. It is the rule of
// policy.Reuse.CanLend, with a function's image, imports and packages as its packages.
func covers(donor, recipient *function) bool {
	if donor == recipient || donor.policy != recipient.policy || !donor.policy.Lends() || donor.Image != recipient.Image {
		return false
	}
	return subset(recipient.Imports, donor.Imports) && subset(recipient.Packages, donor.Packages)
}

// subset reports whether every element of need is in have.
func subset(need, have []string) bool {
	for _, n := range need {
		if !slices.Contains(have, n) {
			return false
		}
	}
	return true
}
