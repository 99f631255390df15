package quantity

import (
	"fmt"
	"time"
)

// Duration is a time.Duration written as Go writes durations: "30s", "1m30s", "250ms".
type Duration time.Duration

// Set parses text into d; with String and Type it makes *Duration a flag value.
func (d *Duration) Set(text string) error {
	v, err := time.ParseDuration(text)
	if err != nil {
		return fmt.Errorf("invalid duration %q: want e.g. 30s or 1m", text)
	}
	*d = Duration(v)
	return nil
}

// String formats the duration like time.Duration, in a form Set reads back.
func (d Duration) String() string { return time.Duration(d).String() }

// Type names the flag value's kind in help output.
func (*Duration) Type() string { return "duration" }

// UnmarshalText reads a duration written as a string in TOML or JSON ("10s").
func (d *Duration) UnmarshalText(p []byte) error { return d.Set(string(p)) }

// MarshalText writes the duration as String does, so JSON holds it as a string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }
