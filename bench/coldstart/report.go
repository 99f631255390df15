package coldstart

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// Measurement is the outcome of one trial. Durations are wall-clock times of the nerdctl steps:
// Pull (`nerdctl pull`), Create (`nerdctl create`), Run (`nerdctl start -a` until the workload's
// ready line) and Total (from the pull command to that line). Warm is a second `nerdctl run` of
// the same image right after, with everything cached. BytesFetched counts the bytes the registry
// sent (headers included) and Requests the HTTP requests it received from the pull until the
// ready line.
type Measurement struct {
	Trial
	Pull, Create, Run, Total, Warm time.Duration
	BytesFetched                   int64
	Requests                       int64 `json:",omitempty"`
	// DaemonCPU is the CPU time the node's snapshotter daemons (bdd and overlaybd-snapshotter,
	// or the stargz snapshotter) used from their start until the cold container exited.
	DaemonCPU time.Duration `json:",omitempty"`
	// Err is why the trial failed; failed trials are reported but not summarized.
	Err string `json:",omitempty"`
}

// CellSummary summarizes the successful trials of one cell.
type CellSummary struct {
	Cell
	Pull, Create, Run, Total, Warm Summary
	BytesFetched                   int64 // median
	Requests                       int64 // median
	Failed                         int
	FirstErr                       string
}

// Report is everything the benchmark measured, with where and when.
type Report struct {
	Date         time.Time
	Machine      string
	LoadStart    string   // load averages (1, 5, 15 min) when the measurements began, "" unknown
	LoadEnd      string   // and after the last one so far
	Runs         int      // trials per cell asked for
	Workloads    []string // report order
	Notes        []string // method details printed under the tables
	Measurements []Measurement
}

// Summaries returns one summary per cell that has measurements, in report order: workload, then
// network, then mode.
func (r *Report) Summaries() []CellSummary {
	byCell := map[Cell][]Measurement{}
	for _, m := range r.Measurements {
		byCell[m.Cell] = append(byCell[m.Cell], m)
	}
	var out []CellSummary
	for _, w := range r.Workloads {
		for _, n := range Networks {
			for _, mode := range Modes {
				c := Cell{Workload: w, Mode: mode, Network: n}
				if ms, ok := byCell[c]; ok {
					out = append(out, summarizeCell(c, ms))
				}
			}
		}
	}
	return out
}

func summarizeCell(c Cell, ms []Measurement) CellSummary {
	s := CellSummary{Cell: c}
	var pull, create, run, total, warm []time.Duration
	var fetched, requests []int64
	for _, m := range ms {
		if m.Err != "" {
			if s.Failed == 0 {
				s.FirstErr = m.Err
			}
			s.Failed++
			continue
		}
		pull, create, run = append(pull, m.Pull), append(create, m.Create), append(run, m.Run)
		total, warm = append(total, m.Total), append(warm, m.Warm)
		fetched, requests = append(fetched, m.BytesFetched), append(requests, m.Requests)
	}
	s.Pull, s.Create, s.Run = Summarize(pull), Summarize(create), Summarize(run)
	s.Total, s.Warm = Summarize(total), Summarize(warm)
	s.BytesFetched, s.Requests = medianInt64(fetched), medianInt64(requests)
	return s
}

// TargetWorkload and TargetNetwork are the cell the targets are judged on.
const (
	TargetWorkload = "python"
	TargetNetwork  = NetShaped
)

// RegistryTraceWorkloads are the workloads the registry trace's targets against the optimized
// eStargz image are judged on (network TargetNetwork).
var RegistryTraceWorkloads = []string{"python", "gcc"}

// TargetResult is one target of issues #8 and #18 judged on the measurements.
type TargetResult struct {
	Name     string
	Want     string
	Measured string // "not measured" when a cell it needs has no successful run
	Met      bool
}

// Targets judges the issues' targets on the medians of the shaped network's cells. Issue #8's,
// on the python workload:
//   - obd lazy vs full pull: at least 5× faster from command to output;
//   - obd with trace vs obd lazy: removes at least 80% of the gap to a warm start, i.e.
//     (obd − obd+trace) / (obd − warm) ≥ 0.8 with warm the second start in obd mode;
//   - obd lazy vs stargz lazy: faster, and fetching no more bytes.
//
// Issue #18's, for a trace found in the registry by a node that never ran the image:
//   - obd+registry-trace vs obd+trace (python): at most 1.10× the time of a local trace;
//   - obd+registry-trace vs estargz-opt, for each of RegistryTraceWorkloads: at least 1.3×
//     faster, and fetching no more bytes.
func (r *Report) Targets() []TargetResult {
	cells := map[string]map[Mode]CellSummary{} // workload -> mode -> summary
	for _, s := range r.Summaries() {
		if s.Network == TargetNetwork && s.Total.N > 0 {
			if cells[s.Workload] == nil {
				cells[s.Workload] = map[Mode]CellSummary{}
			}
			cells[s.Workload][s.Mode] = s
		}
	}
	sums := cells[TargetWorkload]
	have := func(workload string, modes ...Mode) bool {
		for _, m := range modes {
			if _, ok := cells[workload][m]; !ok {
				return false
			}
		}
		return true
	}
	full, obd, trace, stargz := sums[ModeFullPull], sums[ModeOBD], sums[ModeOBDTrace], sums[ModeStargz]

	speedup := TargetResult{Name: "obd lazy vs full pull, end to end", Want: "≥ 5× faster", Measured: "not measured"}
	if have(TargetWorkload, ModeFullPull, ModeOBD) {
		ratio := full.Total.Median.Seconds() / obd.Total.Median.Seconds()
		speedup.Measured = fmt.Sprintf("%.2f× (%s vs %s)", ratio, secs(full.Total.Median), secs(obd.Total.Median))
		speedup.Met = ratio >= 5
	}
	gap := TargetResult{Name: "obd with trace vs obd lazy", Want: "removes ≥ 80% of the gap to a warm start", Measured: "not measured"}
	if have(TargetWorkload, ModeOBD, ModeOBDTrace) {
		g := obd.Total.Median - obd.Warm.Median
		if g > 0 {
			removed := float64(obd.Total.Median-trace.Total.Median) / float64(g)
			gap.Measured = fmt.Sprintf("%.0f%% (lazy %s, trace %s, warm %s)", 100*removed,
				secs(obd.Total.Median), secs(trace.Total.Median), secs(obd.Warm.Median))
			gap.Met = removed >= 0.8
		} else {
			gap.Measured = fmt.Sprintf("no gap: lazy %s ≤ warm %s", secs(obd.Total.Median), secs(obd.Warm.Median))
			gap.Met = true
		}
	}
	faster := TargetResult{Name: "obd lazy vs stargz lazy, end to end", Want: "faster", Measured: "not measured"}
	bytes := TargetResult{Name: "obd lazy vs stargz lazy, bytes fetched", Want: "≤ stargz", Measured: "not measured"}
	if have(TargetWorkload, ModeOBD, ModeStargz) {
		faster.Measured = fmt.Sprintf("%s vs %s", secs(obd.Total.Median), secs(stargz.Total.Median))
		faster.Met = obd.Total.Median < stargz.Total.Median
		bytes.Measured = fmt.Sprintf("%s vs %s", mib(obd.BytesFetched), mib(stargz.BytesFetched))
		bytes.Met = obd.BytesFetched <= stargz.BytesFetched
	}
	targets := []TargetResult{speedup, gap, faster, bytes}

	local := TargetResult{Name: "obd+registry-trace vs obd+trace, end to end", Want: "≤ 1.10× the time", Measured: "not measured"}
	if have(TargetWorkload, ModeOBDRegistryTrace, ModeOBDTrace) {
		remote := sums[ModeOBDRegistryTrace]
		ratio := remote.Total.Median.Seconds() / trace.Total.Median.Seconds()
		local.Measured = fmt.Sprintf("%.2f× (%s vs %s; %s vs %s)", ratio, secs(remote.Total.Median), secs(trace.Total.Median),
			mib(remote.BytesFetched), mib(trace.BytesFetched))
		local.Met = ratio <= 1.10
	}
	targets = append(targets, local)
	for _, w := range RegistryTraceWorkloads {
		peerTime := TargetResult{Name: fmt.Sprintf("obd+registry-trace vs estargz-opt, end to end (%s)", w), Want: "≥ 1.3× faster", Measured: "not measured"}
		peerBytes := TargetResult{Name: fmt.Sprintf("obd+registry-trace vs estargz-opt, bytes fetched (%s)", w), Want: "≤ estargz-opt", Measured: "not measured"}
		if have(w, ModeOBDRegistryTrace, ModeEstargzOpt) {
			remote, opt := cells[w][ModeOBDRegistryTrace], cells[w][ModeEstargzOpt]
			ratio := opt.Total.Median.Seconds() / remote.Total.Median.Seconds()
			peerTime.Measured = fmt.Sprintf("%.2f× (%s vs %s)", ratio, secs(opt.Total.Median), secs(remote.Total.Median))
			peerTime.Met = ratio >= 1.3
			peerBytes.Measured = fmt.Sprintf("%s vs %s", mib(remote.BytesFetched), mib(opt.BytesFetched))
			peerBytes.Met = remote.BytesFetched <= opt.BytesFetched
		}
		targets = append(targets, peerTime, peerBytes)
	}
	return append(targets, sociTargets(cells)...)
}

// WriteMarkdown writes the report as markdown: machine and date, the targets, one table per
// workload, failures, and the method notes. chart, when not empty, is the PNG file name to link.
func (r *Report) WriteMarkdown(w io.Writer, chart string) error {
	var b strings.Builder
	b.WriteString("# Cold-start benchmark\n\n")
	fmt.Fprintf(&b, "Measured %s on %s.\n\n", r.Date.UTC().Format("2006-01-02 15:04 MST"), r.Machine)
	if r.LoadStart != "" && r.LoadEnd != "" {
		fmt.Fprintf(&b, "Load average (1, 5, 15 min): %s at the start, %s at the end (above the number of cores, other work shared the machine).\n\n", r.LoadStart, r.LoadEnd)
	}
	fmt.Fprintf(&b, "Cold runs per cell: %d, interleaved in shuffled order. Times in seconds: median (min–max).\n\n", r.Runs)
	if chart != "" {
		fmt.Fprintf(&b, "![median time from command to output](%s)\n\n", chart)
	}

	fmt.Fprintf(&b, "## Targets (network %s, workload %s unless named)\n\n", TargetNetwork, TargetWorkload)
	b.WriteString("| target | want | measured | met |\n|---|---|---|---|\n")
	for _, t := range r.Targets() {
		met := "no"
		switch {
		case t.Measured == "not measured":
			met = "—"
		case t.Met:
			met = "yes"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", t.Name, t.Want, t.Measured, met)
	}

	sums := r.Summaries()
	var failures []string
	for _, wl := range r.Workloads {
		fmt.Fprintf(&b, "\n## Workload %s\n\n", wl)
		b.WriteString("| network | mode | runs | pull | create | run | total (command → output) | warm start | MiB fetched | requests |\n")
		b.WriteString("|---|---|---|---|---|---|---|---|---|---|\n")
		for _, s := range sums {
			if s.Workload != wl {
				continue
			}
			if s.Failed > 0 {
				failures = append(failures, fmt.Sprintf("- %s / %s / %s: %d failed run(s); first: %s",
					s.Workload, s.Network, s.Mode, s.Failed, oneLine(s.FirstErr)))
			}
			if s.Total.N == 0 {
				fmt.Fprintf(&b, "| %s | %s | 0/%d | failed | | | | | | |\n", s.Network, s.Mode, s.Failed)
				continue
			}
			fmt.Fprintf(&b, "| %s | %s | %d | %s | %s | %s | **%s** | %s | %s | %s |\n", s.Network, s.Mode, s.Total.N,
				spread(s.Pull), spread(s.Create), spread(s.Run), spread(s.Total), spread(s.Warm), mib(s.BytesFetched), count(s.Requests))
		}
	}
	if len(failures) > 0 {
		b.WriteString("\n## Failed runs\n\n" + strings.Join(failures, "\n") + "\n")
	}
	if len(r.Notes) > 0 {
		b.WriteString("\n## Method\n\n")
		for _, n := range r.Notes {
			b.WriteString("- " + n + "\n")
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func spread(s Summary) string {
	return fmt.Sprintf("%.2f (%.2f–%.2f)", s.Median.Seconds(), s.Min.Seconds(), s.Max.Seconds())
}

// count prints a request count; 0 is a results.json from before requests were counted.
func count(n int64) string {
	if n == 0 {
		return "—"
	}
	return fmt.Sprint(n)
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// oneLine keeps the first line of an error, trimmed for a table, so multi-line command output
// does not break the markdown.
func oneLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	s = strings.ReplaceAll(s, "|", "/")
	if r := []rune(s); len(r) > 300 {
		s = string(r[:300]) + "…"
	}
	return s
}
