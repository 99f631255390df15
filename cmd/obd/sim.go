package main

import (
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/obdproject/obd/policy/sim"
	"github.com/obdproject/obd/policy/trace"
)

func newSimCmd() *cobra.Command {
	var (
		dir, saveDir, chart, policies, curve, classes, format string
		day, functions                                        int
		cfg                                                   sim.Config
	)
	cmd := &cobra.Command{
		Use:   "sim [--trace DIR [--day N] | --functions N] [--policies LIST] [--chart out.png]",
		Short: "Replay an invocation trace against keep-alive policies and compare them",
		Long: "sim replays a trace in the Azure Functions 2019 dataset layout (or a synthetic one) against\n" +
			"keep-alive and pre-warm policies and prints, per policy, cold starts, wasted memory-time and\n" +
			"added latency, with ratios to the first policy (the baseline).\n\n" +
			"Policies: fixed-DURATION, hybrid, predictive, reuse+POLICY.",
		Example: "  obd sim --functions 2000 --seed 1 --chart sim.png\n" +
			"  obd sim --trace ~/azurefunctions-dataset2019 --day 1 --policies fixed-10m,hybrid",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var t *trace.Trace
			var err error
			if dir != "" {
				t, err = trace.Load(dir, day)
			} else {
				t, err = trace.Generate(trace.GenerateConfig{Seed: cfg.Seed, Mix: trace.DefaultMix(functions)})
			}
			if err != nil {
				return err
			}
			if saveDir != "" {
				if err := t.Save(saveDir, day); err != nil {
					return err
				}
			}
			if classes != "" {
				if cfg.Classes, err = sim.ParseClasses(classes); err != nil {
					return err
				}
			}
			specs := splitList(policies)
			for _, c := range splitList(curve) {
				if spec := "fixed-" + c; !slices.Contains(specs, spec) {
					specs = append(specs, spec)
				}
			}
			results, err := sim.RunAll(cmd.Context(), t, specs, cfg)
			if err != nil {
				return err
			}
			f := sim.Text
			if format == "markdown" {
				f = sim.Markdown
			} else if format != "text" {
				return fmt.Errorf("--format %q: want text or markdown", format)
			}
			if err := sim.WriteTable(os.Stdout, results, f); err != nil {
				return err
			}
			if chart != "" {
				return sim.WriteChart(chart, results)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&dir, "trace", "", "directory with the dataset's files for --day (default: a synthetic trace)")
	fl.IntVar(&day, "day", 1, "day of the dataset to read (or write with --save-trace)")
	fl.IntVar(&functions, "functions", 1000, "functions in the synthetic trace (periodic, Poisson, bursty and rare)")
	fl.StringVar(&saveDir, "save-trace", "", "also write the trace in the dataset's layout to this directory")
	fl.Uint64Var(&cfg.Seed, "seed", 1, "seed of the synthetic trace, arrival spreading and duration draws")
	fl.StringVar(&policies, "policies", strings.Join(sim.DefaultPolicies, ","), "comma-separated policies, the baseline first")
	fl.StringVar(&curve, "curve", "1m,5m,20m,30m,1h,2h,4h", "extra fixed keep-alives to compare against (the trade-off curve)")
	fl.StringVar(&classes, "classes", "", "node classes NAME:PRICE:SLOWDOWN,... (default: one class)")
	fl.DurationVar(&cfg.ColdStart, "cold-start", 0, "latency of a cold start (default 1s)")
	fl.DurationVar(&cfg.ReuseStart, "reuse-start", 0, "latency of repurposing another function's instance (default 250ms)")
	fl.StringVar(&chart, "chart", "", "also draw cold starts against wasted memory to this file (.png, .svg)")
	fl.StringVar(&format, "format", "text", "table format: text or markdown")
	return cmd
}

func splitList(s string) []string {
	var out []string
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
