package coldstart

import (
	"slices"
	"time"
)

// Summary is the spread of one quantity over a cell's runs.
type Summary struct {
	N                int
	Median, Min, Max time.Duration
}

// Summarize returns the median (the mean of the middle two for an even count), minimum and
// maximum of samples; the zero Summary for none.
func Summarize(samples []time.Duration) Summary {
	if len(samples) == 0 {
		return Summary{}
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	n := len(s)
	median := s[n/2]
	if n%2 == 0 {
		median = (s[n/2-1] + s[n/2]) / 2
	}
	return Summary{N: n, Median: median, Min: s[0], Max: s[n-1]}
}

// medianInt64 returns the median of values (the mean of the middle two for an even count), 0 for
// none.
func medianInt64(values []int64) int64 {
	if len(values) == 0 {
		return 0
	}
	v := slices.Clone(values)
	slices.Sort(v)
	n := len(v)
	if n%2 == 0 {
		return (v[n/2-1] + v[n/2]) / 2
	}
	return v[n/2]
}
