package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/obdproject/obd/policy/probe"
	"github.com/obdproject/obd/policy/sim"
	"github.com/obdproject/obd/policy/trace"
	"github.com/obdproject/obd/sandbox/sandboxapi"
)

func newSimCmd() *cobra.Command {
	var (
		dir, saveDir, chart, policies, curve, classes, format, mix string
		day, functions                                             int
		cfg                                                        sim.Config
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
				gen := trace.GenerateConfig{Seed: cfg.Seed, Mix: trace.DefaultMix(functions)}
				if mix != "" {
					if gen.Mix, err = trace.ParseMix(mix); err != nil {
						return err
					}
				}
				t, err = trace.Generate(gen)
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
	fl.StringVar(&mix, "mix", "", "synthetic functions per arrival pattern, e.g. periodic=300,poisson=700 (overrides --functions)")
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

func newProbeCmd() *cobra.Command {
	var (
		server, image, prefix    string
		policies, mix            string
		verbose                  bool
		memoryMB                 int64
		functions, minutes       int
		seed                     uint64
		minute, keepAlive, sweep time.Duration
	)
	cmd := &cobra.Command{
		Use:   "probe [--server URL] [--keep-alive D] [--minute D] [--functions N] [--minutes M]",
		Short: "Measure a running obd-lambda server from outside and compare it with the simulator",
		Long: "probe deploys tiny functions to an obd-lambda server, measures how long an idle instance\n" +
			"lives, replays a synthetic trace (one trace minute lasting --minute of real time) and prints\n" +
			"cold/warm/hot counts and latencies next to the simulator's prediction for the same arrivals\n" +
			"under the server's fixed keep-alive. The probe's functions are deleted afterwards.\n\n" +
			"With --policies it compares policies instead: per policy, it deploys the trace's functions\n" +
			"under that policy (importing the trace's packages, mapped onto standard modules), replays\n" +
			"the trace for all of them at once, and prints live against simulated starts, reuse and\n" +
			"wasted memory-time in trace time. The server must run its policies' clock 1m/--minute\n" +
			"times as fast (obd-lambda --policy-time-scale).",
		Example: "  obd-lambda --rootfs-dir /opt/obd-deps/rootfs --keep-alive 10s &\n" +
			"  obd probe --keep-alive 10s --minute 1s --functions 20 --minutes 30\n" +
			"  obd-lambda --rootfs-dir /opt/obd-deps/rootfs --policy-time-scale 60 &\n" +
			"  obd probe --policies fixed-10m,hybrid,predictive,reuse+fixed-10m,reuse+hybrid --minute 1s --minutes 120",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if policies != "" {
				return comparePolicies(ctx, &sandboxapi.Client{Base: server}, splitList(policies), image, prefix, mix, functions, minutes, memoryMB, seed, minute, verbose)
			}
			c := &sandboxapi.Client{Base: server}
			names, err := probe.Deploy(ctx, c, image, prefix, functions)
			defer func() {
				for _, n := range names {
					delCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
					err := c.Delete(delCtx, n)
					cancel()
					if err != nil {
						slog.Warn("probe: delete function", "name", n, "err", err)
					}
				}
			}()
			if err != nil {
				return err
			}
			gaps := []time.Duration{keepAlive / 2, keepAlive * 9 / 10, keepAlive*5/4 + sweep, 2 * keepAlive}
			samples, err := probe.Lifetime(ctx, c, names[0], gaps)
			if err != nil {
				return err
			}
			alive, gone := probe.LifetimeBounds(samples)
			fmt.Printf("idle lifetime: still hot after %v, gone after %v (server keep-alive %v)\n", alive, gone, keepAlive)

			t, err := trace.Generate(trace.GenerateConfig{Seed: seed, Minutes: minutes, Mix: trace.DefaultMix(functions)})
			if err != nil {
				return err
			}
			for i := range t.Invocations {
				t.Invocations[i].Function = names[i]
			}
			// The server gives each concurrent invocation its own sandbox; the schedule is
			// replayed invocation by invocation.
			cfg := sim.Config{Seed: seed, DefaultDuration: 10 * time.Millisecond, InstancePerInvocation: true, MaxArrivalsPerMinute: 1 << 20}
			schedule, err := sim.Arrivals(t, cfg)
			if err != nil {
				return err
			}
			time.Sleep(keepAlive*5/4 + sweep) // let the lifetime probe's instance go
			scale := float64(minute) / float64(time.Minute)
			obs, err := probe.Replay(ctx, c, names, schedule, scale)
			if err != nil {
				return err
			}
			live := probe.Summarize(obs)
			toTrace := func(d time.Duration) time.Duration { return time.Duration(float64(d) / scale) }
			predicted, err := probe.Predict(ctx, t, cfg, toTrace(keepAlive), toTrace(keepAlive+sweep))
			if err != nil {
				return err
			}
			fmt.Printf("live: %d invocations, %d cold (p50 %v), %d warm (p50 %v), %d hot (p50 %v), %d errors\n",
				live.Invocations, live.Cold, live.ColdP50, live.Warm, live.WarmP50, live.Hot, live.HotP50, live.Errors)
			fmt.Printf("starts without an idle instance: live %d, simulator %d (keep-alive %v) to %d (with the sweep's slack)\n",
				live.Starts(), predicted[0], toTrace(keepAlive), predicted[1])
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&server, "server", "http://127.0.0.1:8079", "obd-lambda base URL")
	fl.StringVar(&image, "image", "python3-bookworm", "image ref the probe's functions run on")
	fl.StringVar(&prefix, "prefix", "obd-probe", "name prefix of the probe's functions")
	fl.IntVar(&functions, "functions", 10, "functions to deploy and replay")
	fl.IntVar(&minutes, "minutes", 30, "trace minutes to replay")
	fl.Uint64Var(&seed, "seed", 1, "seed of the synthetic trace and its arrival times")
	fl.DurationVar(&minute, "minute", time.Second, "real time one trace minute lasts")
	fl.DurationVar(&keepAlive, "keep-alive", 10*time.Second, "the server's --keep-alive")
	fl.StringVar(&policies, "policies", "", "compare these policies live and simulated (comma-separated, as obd sim names them)")
	fl.StringVar(&mix, "mix", "", "with --policies: functions per arrival pattern, e.g. periodic=4,poisson=3,bursty=1 (default: --functions in the default mix)")
	fl.BoolVar(&verbose, "per-function", false, "with --policies: also print each function's starts, live and simulated")
	fl.Int64Var(&memoryMB, "memory", 128, "with --policies: memory (MB) of each function, in the server and the simulator")
	fl.DurationVar(&sweep, "sweep", 0, "how late the server may expire an idle instance (obd-lambda expires each at its own time)")
	return cmd
}

// comparePolicies runs probe.Compare on a synthetic trace and prints the table.
func comparePolicies(ctx context.Context, c *sandboxapi.Client, policies []string, image, prefix, mix string, functions, minutes int, memoryMB int64, seed uint64, minute time.Duration, verbose bool) error {
	m := trace.DefaultMix(functions)
	if mix != "" {
		var err error
		if m, err = trace.ParseMix(mix); err != nil {
			return err
		}
	}
	gen, err := trace.Generate(trace.GenerateConfig{Seed: seed, Minutes: minutes, Mix: m})
	if err != nil {
		return err
	}
	t, err := probe.ProbeTrace(gen)
	if err != nil {
		return err
	}
	res, timing, err := probe.Compare(ctx, c, t, probe.Comparison{Image: image, Prefix: prefix, Policies: policies,
		Minute: minute, MemoryMB: memoryMB, Seed: seed})
	if err != nil {
		return err
	}
	fmt.Printf("%d functions, %d trace minutes of %v; measured p50: start %v, borrow %v, hot %v; server mean %v per invocation\n\n",
		len(t.Invocations), t.Minutes, minute, timing.StartP50, timing.BorrowP50, timing.HotP50, timing.ServerMean)
	fmt.Print(probe.Table(res))
	if verbose {
		for _, r := range res {
			fmt.Printf("%s starts per function, live/sim:", r.Policy)
			for i := range r.LiveStarts {
				fmt.Printf(" %d/%d", r.LiveStarts[i], r.SimStarts[i])
			}
			fmt.Println()
		}
	}
	return nil
}
