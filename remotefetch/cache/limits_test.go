package cache

import (
	"math"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestAcquireRefusesHugeSizes: a blob size is a claim from outside and sizes the entry's
// bitmaps, so one past MaxUnits fill units (or one that overflows the unit count) is an
// error naming the size, not an allocation.
func TestAcquireRefusesHugeSizes(t *testing.T) {
	c := openCache(t, t.TempDir(), 0)
	d := digest.FromString("huge")
	for _, size := range []int64{math.MaxInt64, math.MaxInt64 - testUnit + 2, MaxUnits*testUnit + 1} {
		if e, err := c.Acquire(d, size); err == nil || !strings.Contains(err.Error(), "size") {
			t.Errorf("Acquire of %d bytes: %v, want an error about the size", size, err)
			if e != nil {
				e.Release()
			}
		}
	}
	e, err := c.Acquire(d, MaxUnits*testUnit)
	if err != nil {
		t.Fatalf("Acquire of the largest size: %v", err)
	}
	e.Release()
}
