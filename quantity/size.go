// Package quantity is how obd's config files and flags write sizes and durations: one parser
// for each, so that "64M" means the same in bdd.toml, the snapshotter's config, `obd` and
// `ctr-obd` flags. Size and Duration are flag values (pflag.Value, flag.Value) and read from
// TOML and JSON strings (encoding.TextUnmarshaler). It is a leaf package, below everything.
package quantity

import (
	"fmt"
	"math/big"
	"strconv"
	"strings"
)

// MaxSize is the largest Size: 4 EiB, so that the sum of two sizes cannot overflow.
const MaxSize = 1 << 62

// Size is a number of bytes. As text it is a whole or decimal number, then, optionally
// after a space, a binary unit in any case: K, M, G, T or P, each optionally followed by
// "i" and "B" (1K = 1KiB = 1kb = 1024), or a lone "B". Surrounding white space is ignored.
// A decimal size is rounded down to whole bytes (1.5K = 1536).
type Size int64

// unitShifts maps a unit's letter to its power of two.
var unitShifts = map[byte]uint{'K': 10, 'M': 20, 'G': 30, 'T': 40, 'P': 50}

// ParseSize parses text as a Size, from 0 to MaxSize.
func ParseSize(text string) (Size, error) {
	number, shift := splitUnit(strings.TrimSpace(text))
	if !validNumber(number) {
		return 0, fmt.Errorf("invalid size %q: want a number with an optional unit (K, M, G, T, P, or KiB, MiB, ...)", text)
	}
	n, _ := new(big.Rat).SetString(number) // a valid number is a valid Rat
	n.Mul(n, new(big.Rat).SetInt(new(big.Int).Lsh(big.NewInt(1), shift)))
	bytes := new(big.Int).Quo(n.Num(), n.Denom()) // rounds toward zero; n >= 0
	if !bytes.IsInt64() || bytes.Int64() > MaxSize {
		return 0, fmt.Errorf("invalid size %q: more than %s", text, Size(MaxSize))
	}
	return Size(bytes.Int64()), nil
}

// splitUnit splits s into its number and its unit's power of two: "1.5 GiB" is "1.5" and 30.
// Where s has no unit, the number is all of s but a final "B".
func splitUnit(s string) (number string, shift uint) {
	rest, _ := cutLetter(s, 'B')
	withoutI, hasI := cutLetter(rest, 'I')
	if n := len(withoutI); n > 0 {
		if sh, ok := unitShifts[upper(withoutI[n-1])]; ok {
			return strings.TrimSpace(withoutI[:n-1]), sh
		}
	}
	if hasI {
		return s, 0 // an "i" with no unit before it: not a number
	}
	return strings.TrimSpace(rest), 0
}

// cutLetter returns s without its last byte if that is the letter c in either case.
func cutLetter(s string, c byte) (string, bool) {
	if n := len(s); n > 0 && upper(s[n-1]) == c {
		return s[:n-1], true
	}
	return s, false
}

func upper(c byte) byte {
	if 'a' <= c && c <= 'z' {
		return c - 'a' + 'A'
	}
	return c
}

// validNumber accepts digits with at most one decimal point between digits.
func validNumber(s string) bool {
	whole, frac, hasPoint := strings.Cut(s, ".")
	return allDigits(whole) && (!hasPoint || allDigits(frac))
}

func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// String writes the size in the largest binary unit that divides it (10GiB), else in bytes,
// in a form ParseSize reads back.
func (s Size) String() string {
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10}} {
		if s != 0 && int64(s)%(1<<u.shift) == 0 {
			return strconv.FormatInt(int64(s)>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(s), 10)
}

// Set parses text into s; with String and Type it makes *Size a flag value.
func (s *Size) Set(text string) error {
	v, err := ParseSize(text)
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// Type names the flag value's kind in help output.
func (*Size) Type() string { return "size" }

// UnmarshalText reads a size written as a string in TOML or JSON ("10GiB").
func (s *Size) UnmarshalText(p []byte) error { return s.Set(string(p)) }
