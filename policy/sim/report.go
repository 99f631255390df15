package sim

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/obdproject/obd/policy/trace"
)

// RunAll replays t against a fresh policy for each spec (see NewPolicy), in parallel, and
// returns the results in spec order.
func RunAll(ctx context.Context, t *trace.Trace, specs []string, cfg Config) ([]Result, error) {
	results := make([]Result, len(specs))
	errs := make([]error, len(specs))
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for i, spec := range specs {
		p, err := NewPolicy(spec, t, cfg)
		if err != nil {
			return nil, err
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			results[i], errs[i] = Run(ctx, t, p, cfg)
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return results, nil
}

// Format is how WriteTable lays out its table.
type Format int

const (
	Text     Format = iota // aligned columns
	Markdown               // a GitHub-flavoured Markdown table
)

// WriteTable writes one row per result, with cold starts and wasted memory also as ratios to
// the first result (the baseline).
func WriteTable(w io.Writer, results []Result, format Format) error {
	head := []string{"policy", "invocations", "cold starts", "cold %", "cold ×base", "reused",
		"wasted GB·h", "wasted ×base", "cost ×base", "p50 added", "p99 added", "fn cold% p75"}
	rows := [][]string{head}
	for _, r := range results {
		base := results[0]
		rows = append(rows, []string{r.Policy, strconv.FormatInt(r.Invocations, 10), strconv.FormatInt(r.ColdStarts, 10),
			fmt.Sprintf("%.3f", 100*r.ColdStartRate()), ratio(float64(r.ColdStarts), float64(base.ColdStarts)),
			strconv.FormatInt(r.ReuseStarts, 10), fmt.Sprintf("%.1f", r.WastedMBSeconds/1024/3600),
			ratio(r.WastedMBSeconds, base.WastedMBSeconds), ratio(r.WastedCost, base.WastedCost),
			r.LatencyP50.Round(time.Millisecond).String(), r.LatencyP99.Round(time.Millisecond).String(),
			fmt.Sprintf("%.1f", 100*r.FunctionColdP75)})
	}
	if format == Markdown {
		for i, row := range rows {
			if _, err := fmt.Fprintf(w, "| %s |\n", strings.Join(row, " | ")); err != nil {
				return err
			}
			if i == 0 {
				if _, err := fmt.Fprintf(w, "|%s\n", strings.Repeat("---|", len(row))); err != nil {
					return err
				}
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	for _, row := range rows {
		if _, err := fmt.Fprintf(tw, "%s\t\n", strings.Join(row, "\t")); err != nil {
			return err
		}
	}
	return tw.Flush()
}

func ratio(v, base float64) string {
	if base == 0 {
		return "-"
	}
	return fmt.Sprintf("%.3f", v/base)
}
