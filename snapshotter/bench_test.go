package snapshotter

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkContainerSnapshot measures Prepare plus Remove of a container's snapshot on a lazy
// chain whose shared device is already mounted (every container of an image but the first)
// against the same on an ordinary one-layer image, in the same run. The ratio is the cost of
// the lazy bookkeeping (layer records, the "is the device still needed" walk).
func BenchmarkContainerSnapshot(b *testing.B) {
	const perRound = 50
	ctx := context.Background()
	f := newLazyFixture(b)
	f.prepare(b, "holder", f.top) // keeps the device mounted throughout
	f.prepare(b, "plain-active", "")
	if err := f.sn.Commit(ctx, "plain", "plain-active"); err != nil {
		b.Fatal(err)
	}
	round := func(parent string, n int) time.Duration {
		start := time.Now()
		for i := range perRound {
			key := fmt.Sprintf("%s-%d-%d", parent, n, i)
			f.prepare(b, key, parent)
			f.remove(b, key)
		}
		return time.Since(start)
	}
	var lazy, plain time.Duration
	b.ResetTimer()
	for n := range b.N {
		plain += round("plain", n)
		lazy += round(f.top, n)
	}
	b.StopTimer()
	ops := float64(b.N * perRound)
	b.ReportMetric(float64(plain.Nanoseconds())/ops, "plain-ns/op")
	b.ReportMetric(float64(lazy.Nanoseconds())/ops, "lazy-ns/op")
	b.ReportMetric(float64(lazy)/float64(plain), "lazy/plain")
	f.remove(b, "holder")
}
