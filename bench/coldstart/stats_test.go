package coldstart

import (
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	s := time.Second
	for _, tc := range []struct {
		in   []time.Duration
		want Summary
	}{
		{nil, Summary{}},
		{[]time.Duration{3 * s}, Summary{N: 1, Median: 3 * s, Min: 3 * s, Max: 3 * s}},
		{[]time.Duration{5 * s, 1 * s, 3 * s}, Summary{N: 3, Median: 3 * s, Min: 1 * s, Max: 5 * s}},
		{[]time.Duration{4 * s, 1 * s, 2 * s, 9 * s}, Summary{N: 4, Median: 3 * s, Min: 1 * s, Max: 9 * s}},
	} {
		if got := Summarize(tc.in); got != tc.want {
			t.Errorf("Summarize(%v) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
	in := []time.Duration{3, 1, 2}
	Summarize(in)
	if in[0] != 3 {
		t.Error("Summarize reordered its input")
	}
}

func TestMedianInt64(t *testing.T) {
	if got := medianInt64(nil); got != 0 {
		t.Errorf("median of none = %d", got)
	}
	if got := medianInt64([]int64{10, 2, 7}); got != 7 {
		t.Errorf("median = %d, want 7", got)
	}
	if got := medianInt64([]int64{10, 2, 7, 1}); got != 4 {
		t.Errorf("median = %d, want 4 (mean of 2 and 7, truncated)", got)
	}
}
