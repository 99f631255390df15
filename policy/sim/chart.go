package sim

import (
	"cmp"
	"fmt"
	"image/color"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// WriteChart draws cold-start rate against wasted memory-time, both relative to the first
// result, to path (the extension picks the format: .png, .svg, .pdf). Fixed keep-alive
// results are joined by a line, the trade-off curve the other policies are judged against;
// the other policies are points named in the legend.
func WriteChart(path string, results []Result) error {
	if len(results) == 0 || results[0].ColdStarts == 0 || results[0].WastedMBSeconds == 0 {
		return fmt.Errorf("sim: chart needs a baseline with cold starts and wasted memory")
	}
	base := results[0]
	point := func(r Result) plotter.XY {
		return plotter.XY{X: r.WastedMBSeconds / base.WastedMBSeconds, Y: float64(r.ColdStarts) / float64(base.ColdStarts)}
	}
	var fixed plotter.XYs
	var labels plotter.XYLabels // fixed keep-alives are labelled on the curve
	var others []Result         // the other policies get a legend entry each
	for _, r := range results {
		if strings.HasPrefix(r.Policy, "fixed-") {
			fixed = append(fixed, point(r))
			labels.XYs = append(labels.XYs, point(r))
			labels.Labels = append(labels.Labels, r.Policy)
		} else {
			others = append(others, r)
		}
	}
	slices.SortFunc(fixed, func(a, b plotter.XY) int { return cmp.Compare(a.X, b.X) })

	p := plot.New()
	p.Title.Text = fmt.Sprintf("Keep-alive policies, relative to %s", base.Policy)
	p.X.Label.Text = "wasted memory-time (× baseline)"
	p.Y.Label.Text = "cold starts (× baseline, log scale)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Add(plotter.NewGrid())
	if len(fixed) > 0 {
		line, points, err := plotter.NewLinePoints(fixed)
		if err != nil {
			return fmt.Errorf("sim: chart: %w", err)
		}
		line.Color = color.RGBA{B: 200, A: 255}
		points.Shape = draw.CircleGlyph{}
		p.Add(line, points)
		p.Legend.Add("fixed keep-alive", line, points)
	}
	for i, r := range others {
		scatter, err := plotter.NewScatter(plotter.XYs{point(r)})
		if err != nil {
			return fmt.Errorf("sim: chart: %w", err)
		}
		scatter.Shape = plotutil.Shape(i + 1)
		scatter.Color = plotutil.Color(i + 1)
		scatter.Radius = vg.Points(5)
		p.Add(scatter)
		p.Legend.Add(r.Policy, scatter)
	}
	l, err := plotter.NewLabels(labels)
	if err != nil {
		return fmt.Errorf("sim: chart: %w", err)
	}
	for i := range l.TextStyle {
		l.TextStyle[i].XAlign = draw.XLeft
		l.Offset = vg.Point{X: vg.Points(5)}
	}
	p.Add(l)
	p.Legend.Top = true
	if err := p.Save(8*vg.Inch, 5*vg.Inch, path); err != nil {
		return fmt.Errorf("sim: chart: %w", err)
	}
	return nil
}
