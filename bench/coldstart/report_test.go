package coldstart

import (
	"bytes"
	"image/png"
	"strings"
	"testing"
	"time"
)

// fakeReport has three runs of each mode in the target cell with the given total median (the
// runs are median-1s, median, median+1s), one failed stargz run, and a busybox cell.
func fakeReport(totals map[Mode]time.Duration, warm time.Duration, fetched map[Mode]int64) *Report {
	r := &Report{Date: time.Date(2026, 11, 23, 15, 0, 0, 0, time.UTC), Machine: "test machine", Runs: 3,
		Workloads: []string{"python", "busybox"}, Notes: []string{"a note"}}
	for mode, total := range totals {
		for i, d := range []time.Duration{-time.Second, 0, time.Second} {
			r.Measurements = append(r.Measurements, Measurement{
				Trial: Trial{Cell: Cell{Workload: "python", Mode: mode, Network: NetShaped}, Round: i},
				Pull:  total / 2, Create: total / 4, Run: total / 4, Total: total + d, Warm: warm,
				BytesFetched: fetched[mode], Requests: 40,
			})
		}
	}
	r.Measurements = append(r.Measurements,
		Measurement{Trial: Trial{Cell: Cell{Workload: "python", Mode: ModeStargz, Network: NetShaped}, Round: 3},
			Err: "nerdctl pull: exit status 1\nsecond line | with a pipe"},
		Measurement{Trial: Trial{Cell: Cell{Workload: "busybox", Mode: ModeFullPull, Network: NetLoopback}},
			Total: time.Second, Warm: time.Second})
	return r
}

func TestTargetsMet(t *testing.T) {
	r := fakeReport(map[Mode]time.Duration{
		ModeFullPull: 20 * time.Second, ModeOBD: 4 * time.Second, ModeOBDTrace: 2200 * time.Millisecond, ModeStargz: 5 * time.Second,
	}, 2*time.Second, map[Mode]int64{ModeOBD: 5 << 20, ModeStargz: 8 << 20})
	for _, target := range r.Targets()[:4] { // issue #8's; TestRegistryTraceTargets has #18's
		if !target.Met {
			t.Errorf("target %q not met: %s", target.Name, target.Measured)
		}
	}
	if got := r.Targets()[0].Measured; !strings.HasPrefix(got, "5.00×") {
		t.Errorf("speedup measured as %q, want 5.00×", got)
	}
	if got := r.Targets()[1].Measured; !strings.HasPrefix(got, "90%") {
		t.Errorf("gap removal measured as %q, want 90%%", got)
	}
}

func TestTargetsMissedAndUnmeasured(t *testing.T) {
	r := fakeReport(map[Mode]time.Duration{
		ModeFullPull: 10 * time.Second, ModeOBD: 4 * time.Second, ModeOBDTrace: 3 * time.Second,
	}, 2*time.Second, map[Mode]int64{ModeOBD: 5 << 20})
	targets := r.Targets()
	if targets[0].Met || targets[1].Met {
		t.Errorf("targets met with 2.5× and 50%%: %+v", targets[:2])
	}
	for _, target := range targets[2:] {
		if target.Measured != "not measured" || target.Met {
			t.Errorf("stargz target without stargz runs: %+v", target)
		}
	}
}

func TestSummariesSkipFailedRuns(t *testing.T) {
	r := fakeReport(map[Mode]time.Duration{ModeStargz: 5 * time.Second}, time.Second, nil)
	sums := r.Summaries()
	if len(sums) != 2 {
		t.Fatalf("got %d summaries, want stargz/python and overlayfs/busybox: %+v", len(sums), sums)
	}
	s := sums[0]
	if s.Mode != ModeStargz || s.Total.N != 3 || s.Failed != 1 || s.Total.Median != 5*time.Second {
		t.Fatalf("stargz summary = %+v", s)
	}
	if sums[1].Workload != "busybox" {
		t.Fatalf("summaries not in workload order: %+v", sums)
	}
}

func TestWriteMarkdown(t *testing.T) {
	r := fakeReport(map[Mode]time.Duration{
		ModeFullPull: 20 * time.Second, ModeOBD: 4 * time.Second, ModeStargz: 5 * time.Second,
	}, 2*time.Second, map[Mode]int64{ModeOBD: 5 << 20, ModeStargz: 8 << 20})
	r.LoadStart, r.LoadEnd = "0.10 0.20 0.30", "1.50 1.00 0.50"
	var b bytes.Buffer
	if err := r.WriteMarkdown(&b, "chart.png"); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, want := range []string{
		"2026-11-23 15:00 UTC on test machine",
		"Load average (1, 5, 15 min): 0.10 0.20 0.30 at the start, 1.50 1.00 0.50 at the end",
		"![median time from command to output](chart.png)",
		"| obd lazy vs full pull, end to end | ≥ 5× faster | 5.00× (20.00 s vs 4.00 s) | yes |",
		"| obd with trace vs obd lazy | removes ≥ 80% of the gap to a warm start | not measured | — |",
		"| shaped | obd | 3 | 2.00 (2.00–2.00) | 1.00 (1.00–1.00) | 1.00 (1.00–1.00) | **4.00 (3.00–5.00)** | 2.00 (2.00–2.00) | 5.0 MiB | 40 |",
		"| loopback | overlayfs | 1 | 0.00 (0.00–0.00) | 0.00 (0.00–0.00) | 0.00 (0.00–0.00) | **1.00 (1.00–1.00)** | 1.00 (1.00–1.00) | 0.0 MiB | — |",
		"## Workload busybox",
		"- python / shaped / stargz: 1 failed run(s); first: nerdctl pull: exit status 1\n",
		"- a note",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "second line") {
		t.Error("a multi-line error leaked into the markdown")
	}
}

func TestWriteChart(t *testing.T) {
	r := fakeReport(map[Mode]time.Duration{ModeFullPull: 20 * time.Second, ModeOBD: 4 * time.Second}, time.Second, nil)
	var b bytes.Buffer
	if err := r.WriteChart(&b); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&b)
	if err != nil {
		t.Fatalf("chart is not a PNG: %v", err)
	}
	if bounds := img.Bounds(); bounds.Dx() < 200 || bounds.Dy() < 200 {
		t.Fatalf("chart is %v, too small to read", bounds)
	}
	if err := (&Report{}).WriteChart(&b); err == nil {
		t.Fatal("a chart of no measurements did not fail")
	}
}

func TestDescribeMachine(t *testing.T) {
	d := DescribeMachine()
	if !strings.Contains(d, "×") || !strings.Contains(d, "go1.") {
		t.Fatalf("machine description %q lacks the CPU count or Go version", d)
	}
}

// shapedRuns returns three runs of a shaped-network cell with the given median total (the runs
// are total-100ms, total, total+100ms) and bytes fetched.
func shapedRuns(workload string, mode Mode, total time.Duration, fetched int64) []Measurement {
	var ms []Measurement
	for i, d := range []time.Duration{-100 * time.Millisecond, 0, 100 * time.Millisecond} {
		ms = append(ms, Measurement{Trial: Trial{Cell: Cell{Workload: workload, Mode: mode, Network: NetShaped}, Round: i},
			Total: total + d, Warm: 200 * time.Millisecond, BytesFetched: fetched})
	}
	return ms
}

func TestRegistryTraceTargets(t *testing.T) {
	const ms, mb = time.Millisecond, int64(1 << 20)
	type want struct {
		measured string
		met      bool
	}
	for _, tc := range []struct {
		name  string
		cells [][]Measurement
		want  map[string]want // target name -> outcome
	}{{
		name: "met",
		cells: [][]Measurement{
			shapedRuns("python", ModeOBDTrace, 1000*ms, 5*mb),
			shapedRuns("python", ModeOBDRegistryTrace, 1050*ms, 5*mb),
			shapedRuns("python", ModeEstargzOpt, 1500*ms, 6*mb),
			shapedRuns("gcc", ModeOBDRegistryTrace, 2000*ms, 15*mb),
			shapedRuns("gcc", ModeEstargzOpt, 3000*ms, 15*mb),
		},
		want: map[string]want{
			"obd+registry-trace vs obd+trace, end to end":               {"1.05× (1.05 s vs 1.00 s; 5.0 MiB vs 5.0 MiB)", true},
			"obd+registry-trace vs estargz-opt, end to end (python)":    {"1.43× (1.50 s vs 1.05 s)", true},
			"obd+registry-trace vs estargz-opt, bytes fetched (python)": {"5.0 MiB vs 6.0 MiB", true},
			"obd+registry-trace vs estargz-opt, end to end (gcc)":       {"1.50× (3.00 s vs 2.00 s)", true},
			"obd+registry-trace vs estargz-opt, bytes fetched (gcc)":    {"15.0 MiB vs 15.0 MiB", true},
		},
	}, {
		name: "missed",
		cells: [][]Measurement{
			shapedRuns("python", ModeOBDTrace, 1000*ms, 5*mb),
			shapedRuns("python", ModeOBDRegistryTrace, 1200*ms, 7*mb),
			shapedRuns("python", ModeEstargzOpt, 1500*ms, 6*mb),
			shapedRuns("gcc", ModeOBDRegistryTrace, 2000*ms, 16*mb),
			shapedRuns("gcc", ModeEstargzOpt, 2400*ms, 15*mb),
		},
		want: map[string]want{
			"obd+registry-trace vs obd+trace, end to end":               {"1.20× (1.20 s vs 1.00 s; 7.0 MiB vs 5.0 MiB)", false},
			"obd+registry-trace vs estargz-opt, end to end (python)":    {"1.25× (1.50 s vs 1.20 s)", false},
			"obd+registry-trace vs estargz-opt, bytes fetched (python)": {"7.0 MiB vs 6.0 MiB", false},
			"obd+registry-trace vs estargz-opt, end to end (gcc)":       {"1.20× (2.40 s vs 2.00 s)", false},
			"obd+registry-trace vs estargz-opt, bytes fetched (gcc)":    {"16.0 MiB vs 15.0 MiB", false},
		},
	}, {
		name: "gcc and the local trace not measured",
		cells: [][]Measurement{
			shapedRuns("python", ModeOBDRegistryTrace, 1000*ms, 5*mb),
			shapedRuns("python", ModeEstargzOpt, 1500*ms, 6*mb),
			shapedRuns("gcc", ModeEstargzOpt, 2400*ms, 15*mb),
		},
		want: map[string]want{
			"obd+registry-trace vs obd+trace, end to end":            {"not measured", false},
			"obd+registry-trace vs estargz-opt, end to end (python)": {"1.50× (1.50 s vs 1.00 s)", true},
			"obd+registry-trace vs estargz-opt, end to end (gcc)":    {"not measured", false},
			"obd+registry-trace vs estargz-opt, bytes fetched (gcc)": {"not measured", false},
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			r := &Report{Workloads: []string{"python", "gcc"}}
			for _, c := range tc.cells {
				r.Measurements = append(r.Measurements, c...)
			}
			got := map[string]TargetResult{}
			for _, target := range r.Targets() {
				got[target.Name] = target
			}
			for name, w := range tc.want {
				g, ok := got[name]
				if !ok {
					t.Errorf("no target %q among %v", name, r.Targets())
					continue
				}
				if g.Measured != w.measured || g.Met != w.met {
					t.Errorf("%s: got %q met=%v, want %q met=%v", name, g.Measured, g.Met, w.measured, w.met)
				}
			}
		})
	}
}

func TestWriteMarkdownListsRegistryTraceTargets(t *testing.T) {
	r := &Report{Workloads: []string{"python"}, Measurements: append(
		shapedRuns("python", ModeOBDRegistryTrace, time.Second, 1<<20),
		shapedRuns("python", ModeEstargzOpt, 2*time.Second, 2<<20)...)}
	var b bytes.Buffer
	if err := r.WriteMarkdown(&b, ""); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"| obd+registry-trace vs estargz-opt, end to end (python) | ≥ 1.3× faster | 2.00× (2.00 s vs 1.00 s) | yes |",
		"| obd+registry-trace vs obd+trace, end to end | ≤ 1.10× the time | not measured | — |",
		"| shaped | obd+registry-trace | 3 |",
		"| shaped | estargz-opt | 3 |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, b.String())
		}
	}
}
