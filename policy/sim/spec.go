package sim

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/obdproject/obd/policy"
	"github.com/obdproject/obd/policy/trace"
)

// DefaultPolicies are the policies `obd sim` compares by default, the baseline first.
var DefaultPolicies = []string{"fixed-10m", "hybrid", "predictive", "reuse+fixed-10m", "reuse+hybrid"}

// NewPolicy builds a fresh policy from a spec: "fixed-DURATION" (e.g. fixed-10m), "hybrid",
// "predictive", or "reuse+SPEC" (cross-function reuse over SPEC, with t's packages).
// Predictive policies weigh cfg's node classes and cold-start cost.
func NewPolicy(spec string, t *trace.Trace, cfg Config) (policy.Policy, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	switch {
	case spec == "hybrid":
		return policy.NewHybrid(policy.HybridConfig{})
	case spec == "predictive":
		return policy.NewPredictive(policy.PredictiveConfig{Classes: cfg.Classes, ColdStart: cfg.ColdStart})
	case strings.HasPrefix(spec, "fixed-"):
		d, err := time.ParseDuration(strings.TrimPrefix(spec, "fixed-"))
		if err != nil {
			return nil, fmt.Errorf("sim: policy %q: %w", spec, err)
		}
		return policy.NewFixed(d)
	case strings.HasPrefix(spec, "reuse+"):
		base, err := NewPolicy(strings.TrimPrefix(spec, "reuse+"), t, cfg)
		if err != nil {
			return nil, err
		}
		return policy.NewReuse(base, t.PackagesByName())
	}
	return nil, fmt.Errorf("sim: unknown policy %q (want fixed-DURATION, hybrid, predictive or reuse+POLICY)", spec)
}

// ParseClasses parses node classes written NAME:PRICE:SLOWDOWN, comma-separated, the default
// class first, e.g. "standard:1:1,economy:0.4:1.5".
func ParseClasses(s string) ([]policy.NodeClass, error) {
	var out []policy.NodeClass
	for item := range strings.SplitSeq(s, ",") {
		parts := strings.Split(item, ":")
		if len(parts) != 3 || parts[0] == "" {
			return nil, fmt.Errorf("%w: node class %q is not NAME:PRICE:SLOWDOWN", ErrConfig, item)
		}
		price, err1 := strconv.ParseFloat(parts[1], 64)
		slowdown, err2 := strconv.ParseFloat(parts[2], 64)
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("%w: node class %q: %w", ErrConfig, item, err)
		}
		out = append(out, policy.NodeClass{Name: parts[0], Price: price, Slowdown: slowdown})
	}
	return out, nil
}
