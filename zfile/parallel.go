package zfile

import (
	"sync"
	"sync/atomic"
)

// forEach calls fn(w, i) for every i in [0, n) on up to workers goroutines, the caller
// among them; w (0 <= w < workers) names the goroutine so fn can use per-goroutine state.
// Goroutines take indexes in increasing order from a shared counter, so one that is
// descheduled holds up only its current item. Each stops at its first error. The error
// returned is that of the lowest failing index: every lower index was handed out earlier
// and was processed to completion.
func forEach(workers, n int, fn func(w, i int) error) error {
	workers = max(1, min(workers, n))
	var next atomic.Int64
	failedAt := make([]int, workers)
	errs := make([]error, workers)
	work := func(w int) {
		for {
			i := int(next.Add(1)) - 1
			if i >= n {
				return
			}
			if err := fn(w, i); err != nil {
				failedAt[w], errs[w] = i, err
				return
			}
		}
	}
	var wg sync.WaitGroup
	for w := 1; w < workers; w++ {
		wg.Go(func() { work(w) })
	}
	work(0)
	wg.Wait()
	var err error
	lowest := n
	for w, e := range errs {
		if e != nil && failedAt[w] < lowest {
			err, lowest = e, failedAt[w]
		}
	}
	return err
}
