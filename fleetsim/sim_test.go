package fleetsim

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testFigures() Figures {
	s := func(start time.Duration, origin, gets int64) Sample {
		return Sample{Start: start, OriginBytes: origin, OriginGets: gets, NodeBytes: 5 << 20}
	}
	return Figures{ImageBytes: 150 << 20, TraceBytes: 5 << 20, OriginRTT: 50 * time.Millisecond, OriginBW: 100e6 / 8,
		Modes: map[Mode][]Sample{
			Direct:     {s(5*time.Second, 5<<20, 70), s(6*time.Second, 5<<20, 70), s(7*time.Second, 5<<20, 70)},
			MirrorCold: {s(6*time.Second, 28<<20, 76)},
			Predicted:  {s(4*time.Second, 160<<20, 60), s(5*time.Second, 160<<20, 60)},
			MirrorWarm: {s(time.Second, 0, 0), s(2*time.Second, 0, 0)},
			P2PSeed:    {s(30*time.Second, 155<<20, 80)},
			P2P:        {s(time.Second, 0, 0), s(3*time.Second, 0, 0)},
		}}
}

func TestSimulate(t *testing.T) {
	f := testFigures()
	points, err := Simulate(f, Config{Nodes: []int{100, 10000}, ZoneSize: 100, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(points) != 2*len(SimModes) {
		t.Fatalf("%d points", len(points))
	}
	at := func(n int, m Mode) Point {
		for _, p := range points {
			if p.Nodes == n && p.Mode == m {
				return p
			}
		}
		t.Fatalf("no point %d %s", n, m)
		return Point{}
	}
	if got, want := at(10000, Direct).OriginBytes, 10000.0*(5<<20); got != want {
		t.Errorf("direct egress at 10000 nodes %.0f, want %.0f", got, want)
	}
	if at(10000, MirrorWarm).OriginBytes != 0 {
		t.Errorf("a warm mirror sent origin bytes")
	}
	if got, want := at(10000, Predicted).OriginBytes, 100.0*(150<<20)+10000.0*(10<<20); got != want {
		t.Errorf("prediction egress at 10000 nodes (100 zones) %.0f, want %.0f", got, want)
	}
	if got := at(10000, P2P).OriginBytes; got != 155<<20 {
		t.Errorf("p2p egress %.0f, want the canary's", got)
	}
	if p := at(10000, P2P); p.P50 < 31*time.Second || p.P99 > 33*time.Second {
		t.Errorf("p2p starts p50 %v p99 %v: want the seed time plus a peer start", p.P50, p.P99)
	}
	for _, p := range points {
		if p.P99 < p.P50 || p.P50 <= 0 {
			t.Errorf("%+v: percentiles out of order", p)
		}
	}
	// 100 nodes' 500 MiB drain in 0.4 s at 10 Gbit/s, minus what one node's took at 100 Mbit/s:
	// nothing; 10000 nodes' 49 GiB take 42 s.
	if d := at(100, Direct).P99; d > 7*time.Second {
		t.Errorf("100 direct nodes p99 %v: a drained link should add nothing", d)
	}
	if d := at(10000, Direct).P50; d < 40*time.Second {
		t.Errorf("10000 direct nodes p50 %v: the origin's drain is missing", d)
	}
	md := Markdown(points)
	if !strings.Contains(md, "| 10000 |") || strings.Count(md, "\n") != 4 || !strings.Contains(md, "mirror-cold") {
		t.Errorf("markdown:\n%s", md)
	}
	var png bytes.Buffer
	if err := WriteChart(&png, points, "test"); err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(png.Bytes(), []byte("\x89PNG")) {
		t.Fatal("chart is not a PNG")
	}
}

func TestFiguresRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f.json")
	if err := testFigures().Save(path); err != nil {
		t.Fatal(err)
	}
	f, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if m, _ := f.Median(Direct); m.Start != 6*time.Second {
		t.Fatalf("median direct start %v after a round trip", m.Start)
	}
	if _, err := Simulate(Figures{}, Config{}); err == nil {
		t.Fatal("simulated without figures")
	}
}
