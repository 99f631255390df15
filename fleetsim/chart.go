package fleetsim

import (
	"fmt"
	"io"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// WriteChart draws the simulation as a PNG of two panels over fleet size (log scale): the
// origin's egress per mode, and each mode's p50 (dashed) and p99 start time.
func WriteChart(w io.Writer, points []Point, title string) error {
	if len(points) == 0 {
		return fmt.Errorf("fleetsim: chart: no points")
	}
	egress, starts := plot.New(), plot.New()
	egress.Title.Text = "Origin egress of the wave (" + title + ")"
	egress.Y.Label.Text = "GiB (log; none drawn at 0.001)"
	starts.Title.Text = "Start time, p50 dashed, p99 solid"
	starts.Y.Label.Text = "seconds"
	for _, p := range []*plot.Plot{egress, starts} {
		p.X.Label.Text = "nodes starting the image at once (log)"
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = plot.LogTicks{Prec: -1}
		p.Legend.Top, p.Legend.Left = true, true
	}
	egress.Y.Scale = plot.LogScale{}
	egress.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	for i, mode := range SimModes {
		var eg, p50, p99 plotter.XYs
		for _, p := range points {
			if p.Mode != mode {
				continue
			}
			eg = append(eg, plotter.XY{X: float64(p.Nodes), Y: max(p.OriginBytes/(1<<30), 1e-3)})
			p50 = append(p50, plotter.XY{X: float64(p.Nodes), Y: p.P50.Seconds()})
			p99 = append(p99, plotter.XY{X: float64(p.Nodes), Y: p.P99.Seconds()})
		}
		color := plotutil.Color(i)
		for _, s := range []struct {
			p      *plot.Plot
			xy     plotter.XYs
			dashed bool
			legend bool
		}{{egress, eg, false, true}, {starts, p50, true, false}, {starts, p99, false, true}} {
			l, err := plotter.NewLine(s.xy)
			if err != nil {
				return fmt.Errorf("fleetsim: chart: %w", err)
			}
			l.Color, l.Width = color, vg.Points(1.5)
			if s.dashed {
				l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			}
			s.p.Add(l)
			if s.legend {
				s.p.Legend.Add(string(mode), l)
			}
		}
	}
	starts.Y.Min = 0
	img := vgimg.New(12*vg.Inch, 4.5*vg.Inch)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Millimeter * 4, PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	canvases := plot.Align([][]*plot.Plot{{egress, starts}}, tiles, dc)
	egress.Draw(canvases[0][0])
	starts.Draw(canvases[0][1])
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(w); err != nil {
		return fmt.Errorf("fleetsim: chart: %w", err)
	}
	return nil
}
