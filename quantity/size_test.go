package quantity

import (
	"strings"
	"testing"

	units "github.com/docker/go-units"
)

// TestParseSize: the sizes bdd.toml, the snapshotter's config and the obd and ctr-obd flags
// accept.
func TestParseSize(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Size
	}{
		{"0", 0},
		{"4096", 4096},
		{"7B", 7},
		{"7b", 7},
		{"1K", 1 << 10},
		{"64k", 64 << 10},
		{"64KiB", 64 << 10},
		{"64kib", 64 << 10},
		{"64KB", 64 << 10},
		{"64Ki", 64 << 10},
		{"3 M", 3 << 20},
		{"3   M", 3 << 20},
		{" 512MiB\n", 512 << 20},
		{"1G", 1 << 30},
		{"1GB", 1 << 30},
		{"10GiB", 10 << 30},
		{"64g", 64 << 30},
		{"2T", 2 << 40},
		{"1PiB", 1 << 50},
		{"1.5G", 3 << 29},
		{"0.5K", 512},
		{"1.1K", 1126}, // 1126.4, rounded down
		{"4096P", MaxSize},
	} {
		got, err := ParseSize(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"", " ", "K", "GiB", "B", "-1", "+1", "1e3", "0x10", "1.", ".5", "1.5.3", "1..5",
		"12Q", "7iB", "7i", "1 2K", "1KK", "1KiBB", "ten gigs", "4097P", "99999999999TiB", "9223372036854775808"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", in, got)
		} else if !strings.Contains(err.Error(), "invalid size") {
			t.Errorf("ParseSize(%q): error %q does not say invalid size", in, err)
		}
	}
}

func TestSizeString(t *testing.T) {
	for s, want := range map[Size]string{0: "0", 7: "7", 1 << 10: "1KiB", 1536: "1536", 10 << 30: "10GiB", 3 << 40: "3TiB", 1 << 50: "1024TiB"} {
		if got := s.String(); got != want {
			t.Errorf("Size(%d).String() = %q, want %q", int64(s), got, want)
		}
	}
}

// FuzzParseSize: an accepted size is in range, String writes it back in a form that parses
// to it, and a whole number with a unit means what docker's go-units reads it as.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"4096", "10GiB", "3 M", "1.5G", "64kb", "1P"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseSize(s)
		if err != nil {
			return
		}
		if v < 0 || v > MaxSize {
			t.Fatalf("ParseSize(%q) = %d, out of range", s, v)
		}
		var back Size
		if err := back.Set(v.String()); err != nil || back != v {
			t.Fatalf("ParseSize(%q) = %d; its String %q reads back as %d, %v", s, v, v.String(), back, err)
		}
		if strings.Contains(s, ".") || v >= 1<<53 { // go-units goes through float64
			return
		}
		if theirs, err := units.RAMInBytes(strings.TrimSpace(s)); err == nil && theirs != int64(v) {
			t.Fatalf("ParseSize(%q) = %d, go-units reads %d", s, v, theirs)
		}
	})
}
