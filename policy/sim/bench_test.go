package sim

import (
	"context"
	"testing"
	"time"

	"github.com/obdproject/obd/policy/trace"
)

// BenchmarkReplay replays one synthetic day of 2000 functions per policy and reports each
// policy's replay time and quality as ratios to fixed-10m measured in the same run, plus the
// baseline's own throughput.
func BenchmarkReplay(b *testing.B) {
	tr, err := trace.Generate(trace.GenerateConfig{Seed: 1, Mix: trace.DefaultMix(2000)})
	if err != nil {
		b.Fatal(err)
	}
	specs := append([]string(nil), DefaultPolicies...)
	elapsed := make([]time.Duration, len(specs))
	results := make([]Result, len(specs))
	for b.Loop() {
		for i, spec := range specs {
			p, err := NewPolicy(spec, tr, Config{})
			if err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			if results[i], err = Run(context.Background(), tr, p, Config{Seed: 1}); err != nil {
				b.Fatal(err)
			}
			elapsed[i] += time.Since(start)
		}
	}
	base := results[0]
	b.ReportMetric(float64(base.Invocations)*float64(b.N)/elapsed[0].Seconds(), "baseline-invocations/s")
	for i, spec := range specs[1:] {
		r := results[i+1]
		b.ReportMetric(elapsed[i+1].Seconds()/elapsed[0].Seconds(), spec+"-time/baseline")
		b.ReportMetric(float64(r.ColdStarts)/float64(base.ColdStarts), spec+"-cold/baseline")
		b.ReportMetric(r.WastedMBSeconds/base.WastedMBSeconds, spec+"-wasted/baseline")
	}
}
