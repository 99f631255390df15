package bdd

import (
	"context"
	"math"
	"runtime/debug"
	"testing"
	"time"
)

func TestMemoryLimit(t *testing.T) {
	for _, tc := range []struct{ configured, live, want int64 }{
		{56 << 20, 10 << 20, 56 << 20}, // small live heap: the configured limit holds
		{56 << 20, 60 << 20, 66 << 20}, // near it: stay 10% above the live heap
		{56 << 20, 400 << 20, 440 << 20},
	} {
		if got := memoryLimit(tc.configured, tc.live); got != tc.want {
			t.Errorf("memoryLimit(%d, %d) = %d, want %d", tc.configured, tc.live, got, tc.want)
		}
	}
}

func TestLimitMemorySetsRuntimeLimit(t *testing.T) {
	defer debug.SetMemoryLimit(math.MaxInt64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		LimitMemory(ctx, 1<<40, time.Hour)
		close(done)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for debug.SetMemoryLimit(-1) != 1<<40 {
		if time.Now().After(deadline) {
			t.Fatal("LimitMemory did not set the runtime's memory limit")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
}
