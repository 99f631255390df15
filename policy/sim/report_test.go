package sim

import (
	"bytes"
	"context"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/obdproject/obd/policy/trace"
)

func TestRunAllTableAndChart(t *testing.T) {
	tr, err := trace.Generate(trace.GenerateConfig{Seed: 4, Minutes: 360, Mix: trace.DefaultMix(80)})
	if err != nil {
		t.Fatal(err)
	}
	specs := []string{"fixed-10m", "hybrid", "fixed-30m"}
	results, err := RunAll(context.Background(), tr, specs, Config{Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range results {
		if r.Policy != specs[i] || r.Invocations == 0 || r.Invocations != results[0].Invocations {
			t.Fatalf("result %d: %+v", i, r)
		}
	}
	var text, md bytes.Buffer
	if err := WriteTable(&text, results, Text); err != nil {
		t.Fatal(err)
	}
	if err := WriteTable(&md, results, Markdown); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(md.String()), "\n")
	if len(lines) != 2+len(specs) || !strings.HasPrefix(lines[2], "| fixed-10m | ") || !strings.Contains(lines[2], "| 1.000 |") {
		t.Fatalf("markdown table:\n%s", md.String())
	}
	if n := strings.Count(text.String(), "\n"); n != 1+len(specs) {
		t.Fatalf("text table has %d lines:\n%s", n, text.String())
	}
	path := filepath.Join(t.TempDir(), "chart.png")
	if err := WriteChart(path, results); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if img, err := png.Decode(f); err != nil || img.Bounds().Dx() < 100 {
		t.Fatalf("chart is not a PNG: %v", err)
	}
	if err := WriteChart(path, nil); err == nil {
		t.Fatal("chart without results succeeded")
	}
	if _, err := RunAll(context.Background(), tr, []string{"nonsense"}, Config{}); err == nil {
		t.Fatal("unknown policy accepted")
	}
}

func TestParseClasses(t *testing.T) {
	c, err := ParseClasses("standard:1:1,economy:0.4:1.5")
	if err != nil || len(c) != 2 || c[1].Name != "economy" || c[1].Price != 0.4 || c[1].Slowdown != 1.5 {
		t.Fatalf("%+v %v", c, err)
	}
	for _, bad := range []string{"", "a:1", "a:x:1", ":1:1"} {
		if _, err := ParseClasses(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	// Values that parse but make no sense are caught when the config is used.
	c, _ = ParseClasses("a:0:1")
	if _, err := Run(context.Background(), &trace.Trace{}, nil, Config{Classes: c}); err == nil {
		t.Error("zero price accepted")
	}
}
