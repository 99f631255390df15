package quantity

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/pelletier/go-toml/v2"
)

func TestDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{"30s": 30 * time.Second, "1m30s": 90 * time.Second, "250ms": 250 * time.Millisecond, "0s": 0} {
		var d Duration
		if err := d.Set(in); err != nil || time.Duration(d) != want {
			t.Errorf("Set(%q) = %v, %v; want %v", in, time.Duration(d), err, want)
		}
		var back Duration
		if err := back.Set(d.String()); err != nil || back != d {
			t.Errorf("%q: String %q reads back as %v, %v", in, d.String(), back, err)
		}
	}
	for _, bad := range []string{"", "30", "thirty seconds", "1d"} {
		var d Duration
		if err := d.Set(bad); err == nil {
			t.Errorf("Set(%q) accepted as %v", bad, time.Duration(d))
		}
	}
}

// TestConfigEncodings: sizes and durations as the configs hold them: TOML (bdd) strings, and
// sizes as plain numbers of bytes; JSON (the snapshotter) strings.
func TestConfigEncodings(t *testing.T) {
	var cfg struct {
		Size    Size     `toml:"size" json:"size"`
		Count   Size     `toml:"count" json:"count"`
		Timeout Duration `toml:"timeout" json:"timeout"`
	}
	if err := toml.Unmarshal([]byte("size = \"10GiB\"\ncount = 4096\ntimeout = \"30s\"\n"), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Size != 10<<30 || cfg.Count != 4096 || time.Duration(cfg.Timeout) != 30*time.Second {
		t.Fatalf("TOML: %+v", cfg)
	}
	if err := json.Unmarshal([]byte(`{"size":"3 M","count":"7","timeout":"1m"}`), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Size != 3<<20 || cfg.Count != 7 || time.Duration(cfg.Timeout) != time.Minute {
		t.Fatalf("JSON: %+v", cfg)
	}
	out, err := json.Marshal(cfg)
	if err != nil || string(out) != `{"size":3145728,"count":7,"timeout":"1m0s"}` {
		t.Fatalf("JSON out: %s, %v", out, err)
	}
	for _, bad := range []string{`{"timeout":10}`, `{"count":7}`, `{"size":"ten"}`, `{"timeout":"ten"}`} {
		if err := json.Unmarshal([]byte(bad), &cfg); err == nil {
			t.Errorf("JSON %s accepted", bad)
		}
	}
	if err := toml.Unmarshal([]byte("size = \"ten gigs\"\n"), &cfg); err == nil {
		t.Error("TOML size = \"ten gigs\" accepted")
	}
}
