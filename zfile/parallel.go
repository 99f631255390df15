package zfile

import (
	"sync"
	"sync/atomic"
)

// forEach calls fn(w, i) for every i in [0, n) on up to workers goroutines, the caller
// among them; w (0 <= w < workers) names the goroutine so fn can use per-goroutine state.
// If prepare is not nil, the caller runs it first while the other goroutines start, and
// nothing is processed if it fails. Goroutines take indexes in increasing order from a
// shared counter, so one that is descheduled holds up only its current item. Each stops at
// its first error. The error returned is that of the lowest failing index: every lower
// index was handed out earlier and was processed to completion.
func forEach(workers, n int, prepare func() error, fn func(w, i int) error) error {
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
	var (
		wg      sync.WaitGroup
		ready   = make(chan struct{})
		prepErr error
	)
	for w := 1; w < workers; w++ {
		wg.Go(func() {
			<-ready
			if prepErr == nil {
				work(w)
			}
		})
	}
	if prepare != nil {
		prepErr = prepare()
	}
	close(ready)
	if prepErr == nil {
		work(0)
	}
	wg.Wait()
	if prepErr != nil {
		return prepErr
	}
	var err error
	lowest := n
	for w, e := range errs {
		if e != nil && failedAt[w] < lowest {
			err, lowest = e, failedAt[w]
		}
	}
	return err
}
