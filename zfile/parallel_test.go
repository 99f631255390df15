package zfile

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
)

func TestForEachReportsLowestFailure(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	for trial := range 300 {
		n, workers := rng.IntN(60), 1+rng.IntN(6)
		failing := map[int]bool{}
		for range rng.IntN(4) {
			if n > 0 {
				failing[rng.IntN(n)] = true
			}
		}
		lowest := n
		for i := range failing {
			lowest = min(lowest, i)
		}
		var mu sync.Mutex
		called := map[int]bool{}
		err := forEach(workers, n, nil, func(w, i int) error {
			if w < 0 || w >= workers {
				t.Errorf("worker id %d outside [0, %d)", w, workers)
			}
			mu.Lock()
			called[i] = true
			mu.Unlock()
			if failing[i] {
				return fmt.Errorf("item %d", i)
			}
			return nil
		})
		switch {
		case lowest == n && err != nil:
			t.Fatalf("trial %d: error %v without failures", trial, err)
		case lowest < n && (err == nil || err.Error() != fmt.Sprintf("item %d", lowest)):
			t.Fatalf("trial %d: error %v, want item %d", trial, err, lowest)
		}
		for i := range lowest {
			if !called[i] {
				t.Fatalf("trial %d: item %d below the failure %d was skipped", trial, i, lowest)
			}
		}
	}
}

func TestForEachStopsWhenPrepareFails(t *testing.T) {
	errPrepare := fmt.Errorf("fetch failed")
	for workers := 1; workers <= 4; workers++ {
		err := forEach(workers, 10, func() error { return errPrepare }, func(w, i int) error {
			t.Errorf("item %d processed after prepare failed", i)
			return nil
		})
		if err != errPrepare {
			t.Fatalf("workers %d: error %v, want the prepare error", workers, err)
		}
	}
}
