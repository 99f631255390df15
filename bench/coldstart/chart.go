package coldstart

import (
	"fmt"
	"io"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// WriteChart draws the median time from command to output as a PNG bar chart: one group of bars
// per workload and network, one bar per mode. Cells without a successful run draw no bar.
func (r *Report) WriteChart(w io.Writer) error {
	sums := r.Summaries()
	type group struct {
		workload string
		network  Network
	}
	var groups []group
	seen := map[group]bool{}
	for _, s := range sums {
		g := group{s.Workload, s.Network}
		if !seen[g] {
			seen[g] = true
			groups = append(groups, g)
		}
	}
	if len(groups) == 0 {
		return fmt.Errorf("chart: no measurements")
	}
	labels := make([]string, len(groups))
	index := map[group]int{}
	for i, g := range groups {
		labels[i] = fmt.Sprintf("%s\n%s", g.workload, g.network)
		index[g] = i
	}

	p := plot.New()
	p.Title.Text = fmt.Sprintf("Cold start, median of runs (%s)", r.Date.UTC().Format("2006-01-02"))
	p.Y.Label.Text = "seconds from pull to output"
	p.Legend.Top = true
	barWidth := vg.Points(14)
	for i, mode := range Modes {
		values := make(plotter.Values, len(groups))
		drawn := false
		for _, s := range sums {
			if s.Mode == mode && s.Total.N > 0 {
				values[index[group{s.Workload, s.Network}]] = s.Total.Median.Seconds()
				drawn = true
			}
		}
		if !drawn {
			continue
		}
		bars, err := plotter.NewBarChart(values, barWidth)
		if err != nil {
			return fmt.Errorf("chart: bars of %s: %w", mode, err)
		}
		bars.LineStyle.Width = 0
		bars.Color = plotutil.Color(i)
		bars.Offset = barWidth * vg.Length(2*i-len(Modes)+1) / 2
		p.Add(bars)
		p.Legend.Add(string(mode), bars)
	}
	p.Y.Min = 0
	p.Y.Max *= 1.25 // headroom for the legend above the tallest bar
	p.NominalX(labels...)
	width := vg.Length(len(groups))*barWidth*vg.Length(len(Modes)+2) + 2*vg.Inch
	canvas, err := p.WriterTo(width, 4*vg.Inch, "png")
	if err != nil {
		return fmt.Errorf("chart: render: %w", err)
	}
	if _, err := canvas.WriteTo(w); err != nil {
		return fmt.Errorf("chart: write: %w", err)
	}
	return nil
}
