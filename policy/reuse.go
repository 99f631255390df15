package policy

import (
	"fmt"
	"slices"
)

// Reuse adds Pagurus-style cross-function reuse to a base policy: an idle instance (or zygote)
// of a donor function can be repurposed for a recipient whose packages it already holds, so a
// would-be cold start only pays for the handover. Windows come from the base policy.
//
// A function's packages are whatever its instance loads before running the handler: a
// runtime, libraries, a zygote's imports. A donor covers a recipient when the recipient's
// package set is a subset of the donor's; a function with no known packages is covered only by
// itself. Reuse is immutable after construction and safe for concurrent use.
type Reuse struct {
	base     Policy
	packages map[string][]string // function → sorted, deduplicated packages
}

// NewReuse wraps base; packages maps each function to the packages its instances load.
func NewReuse(base Policy, packages map[string][]string) (*Reuse, error) {
	if base == nil {
		return nil, fmt.Errorf("%w: reuse needs a base policy", ErrConfig)
	}
	own := make(map[string][]string, len(packages))
	for fn, pkgs := range packages {
		p := slices.Clone(pkgs)
		slices.Sort(p)
		own[fn] = slices.Compact(p)
	}
	return &Reuse{base: base, packages: own}, nil
}

// Name is "reuse+" and the base policy's name.
func (r *Reuse) Name() string { return "reuse+" + r.base.Name() }

// Decide defers to the base policy.
func (r *Reuse) Decide(inv Invocation) Window { return r.base.Decide(inv) }

// Forget passes fn on to the base policy when it keeps per-function state.
func (r *Reuse) Forget(fn string) {
	if f, ok := r.base.(Forgetter); ok {
		f.Forget(fn)
	}
}

// CanLend reports whether donor's packages include all of recipient's (and recipient has any).
func (r *Reuse) CanLend(donor, recipient string) bool {
	if donor == recipient {
		return true
	}
	need, have := r.packages[recipient], r.packages[donor]
	if len(need) == 0 || len(need) > len(have) {
		return false
	}
	i := 0
	for _, p := range need { // both sorted: one merge pass
		for i < len(have) && have[i] < p {
			i++
		}
		if i == len(have) || have[i] != p {
			return false
		}
		i++
	}
	return true
}

// Packages returns the sorted packages of fn, for callers that index donors by package.
// The slice must not be modified.
func (r *Reuse) Packages(fn string) []string { return r.packages[fn] }
