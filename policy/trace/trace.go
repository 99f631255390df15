// Package trace reads and writes serverless invocation traces in the CSV layout of the Azure
// Functions 2019 public dataset, and generates synthetic traces in the same layout. It feeds
// the keep-alive simulator (package policy/sim), which replays a trace against the policies of
// package policy: the decisions the sandbox server makes at the top box of docs/DESIGN.md's read
// path ("container / sandbox").
//
// One day of the dataset is three files, all read and written here:
//
//	invocations_per_function_md.anon.dDD.csv  HashOwner,HashApp,HashFunction,Trigger,1..1440
//	function_durations_percentiles.anon.dDD.csv  per-function execution times (ms)
//	app_memory_percentiles.anon.dDD.csv  per-application allocated memory (MB)
//
// plus an optional fourth file this project adds for synthetic traces,
// function_packages.synthetic.csv (HashOwner,HashApp,HashFunction,Packages with the packages
// separated by spaces), which cross-function reuse needs and the public dataset lacks.
package trace

import (
	"errors"
	"fmt"
)

// ErrFormat marks input that is not in the dataset's layout.
var ErrFormat = errors.New("trace: malformed file")

// FunctionKey identifies a function as the dataset does: hashed owner, application, function.
type FunctionKey struct {
	Owner, App, Function string
}

// String joins the key's parts with slashes.
func (k FunctionKey) String() string { return k.Owner + "/" + k.App + "/" + k.Function }

// AppKey identifies an application: hashed owner and application.
type AppKey struct {
	Owner, App string
}

// AppKey returns the application the function belongs to.
func (k FunctionKey) AppKey() AppKey { return AppKey{Owner: k.Owner, App: k.App} }

// Invocations is one row of the invocations file: a function's invocation count per minute.
type Invocations struct {
	FunctionKey
	Trigger string // http, timer, queue, event, storage, orchestration, others
	Counts  []int  // Counts[m] invocations started in minute m (0-based) of the trace
}

// DurationPercentiles are the percentiles the durations file records, in this order.
var DurationPercentiles = [...]float64{0, 1, 25, 50, 75, 99, 100}

// Durations is one row of the durations file: a function's execution times in milliseconds.
type Durations struct {
	FunctionKey
	Average          float64
	Count            int
	Minimum, Maximum float64
	Percentiles      [len(DurationPercentiles)]float64
}

// MemoryPercentiles are the percentiles the memory file records, in this order.
var MemoryPercentiles = [...]float64{1, 5, 25, 50, 75, 95, 99, 100}

// AppMemory is one row of the memory file: an application's allocated memory in MB.
type AppMemory struct {
	AppKey
	SampleCount int
	AverageMB   float64
	Percentiles [len(MemoryPercentiles)]float64
}

// Trace is one day (or any span) of invocations with the durations and memory that go with
// them. Durations, Memory and Packages may lack entries for some functions.
type Trace struct {
	Minutes     int // length of every Counts slice
	Invocations []Invocations
	Durations   []Durations
	Memory      []AppMemory
	Packages    map[FunctionKey][]string
}

// Validate checks that every row has Minutes counts and that no count is negative.
func (t *Trace) Validate() error {
	for i, inv := range t.Invocations {
		if len(inv.Counts) != t.Minutes {
			return fmt.Errorf("%w: function %s has %d minutes, trace has %d", ErrFormat, inv.FunctionKey, len(inv.Counts), t.Minutes)
		}
		for m, c := range inv.Counts {
			if c < 0 {
				return fmt.Errorf("%w: function %d (%s) minute %d: negative count %d", ErrFormat, i, inv.FunctionKey, m+1, c)
			}
		}
	}
	return nil
}

// PackagesByName returns t's packages keyed by function name (FunctionKey.String), the
// names the simulator gives policies; it is what policy.NewReuse takes.
func (t *Trace) PackagesByName() map[string][]string {
	out := make(map[string][]string, len(t.Packages))
	for k, p := range t.Packages {
		out[k.String()] = p
	}
	return out
}
