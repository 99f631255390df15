package policy

import (
	"fmt"
	"time"
)

// Fixed keeps every instance loaded for the same time after each invocation, as common
// serverless platforms do. It keeps no state.
type Fixed struct {
	KeepAlive time.Duration
}

// NewFixed returns a fixed keep-alive policy; keepAlive must not be negative.
func NewFixed(keepAlive time.Duration) (Fixed, error) {
	if keepAlive < 0 {
		return Fixed{}, fmt.Errorf("%w: fixed keep-alive %v is negative", ErrConfig, keepAlive)
	}
	return Fixed{KeepAlive: keepAlive}, nil
}

// Name is "fixed-" and the keep-alive, e.g. "fixed-10m".
func (f Fixed) Name() string { return "fixed-" + shortDuration(f.KeepAlive) }

// Decide returns the fixed window whatever the invocation.
func (f Fixed) Decide(Invocation) Window { return Window{KeepAlive: f.KeepAlive} }

// shortDuration prints whole minutes and hours without trailing zero units ("10m", "4h").
func shortDuration(d time.Duration) string {
	s := d.String()
	if d%time.Minute == 0 && d > 0 {
		s = s[:len(s)-2] // drop "0s"
		if d%time.Hour == 0 {
			s = s[:len(s)-2] // drop "0m"
		}
	}
	return s
}
