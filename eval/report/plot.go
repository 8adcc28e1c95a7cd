// Package report turns a run's history and evaluation into plots (PNG and
// SVG, drawn with gonum/plot), a Markdown report and metrics.json.
package report

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/handnet/handnet/eval"
	"github.com/handnet/handnet/train"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/palette/moreland"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Series is one named curve over epochs 1..len(Y).
type Series struct {
	Name string
	Y    []float64
}

// save writes p as base.png and base.svg (through temporary files).
func save(p *plot.Plot, w, h vg.Length, base string) error {
	for _, ext := range []string{".png", ".svg"} {
		tmp := base + ".tmp" + ext
		if err := p.Save(w, h, tmp); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("plot %s: %w", base+ext, err)
		}
		if err := os.Rename(tmp, base+ext); err != nil {
			return err
		}
	}
	return nil
}

// Curves draws series against the epoch and saves base.png / base.svg.
// The legend goes top-left for rising curves (accuracy), else top-right.
func Curves(title, ylabel string, series []Series, base string) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "epoch"
	p.Y.Label.Text = ylabel
	p.Add(plotter.NewGrid())
	var args []any
	for _, s := range series {
		pts := make(plotter.XYs, len(s.Y))
		for i, y := range s.Y {
			pts[i] = plotter.XY{X: float64(i + 1), Y: y}
		}
		args = append(args, s.Name, pts)
	}
	if err := plotutil.AddLinePoints(p, args...); err != nil {
		return err
	}
	p.Legend.Top = true
	p.Legend.Left = ylabel == "accuracy"
	p.X.Tick.Marker = integerTicks{}
	return save(p, 16*vg.Centimeter, 10*vg.Centimeter, base)
}

// integerTicks marks whole epochs only.
type integerTicks struct{}

func (integerTicks) Ticks(min, max float64) []plot.Tick {
	step := math.Max(1, math.Ceil((max-min)/10))
	var t []plot.Tick
	for v := math.Ceil(min); v <= max; v += step {
		t = append(t, plot.Tick{Value: v, Label: fmt.Sprint(v)})
	}
	return t
}

// HistoryPlots draws a run's loss and accuracy curves into dir
// (loss.png/.svg and accuracy.png/.svg).
func HistoryPlots(h train.History, dir string) error {
	var tl, vl, ta, va []float64
	for _, e := range h {
		tl, vl, ta, va = append(tl, e.TrainLoss), append(vl, e.ValLoss), append(ta, e.TrainAcc), append(va, e.ValAcc)
	}
	if err := Curves("Loss", "cross-entropy", []Series{{"train", tl}, {"validation", vl}}, filepath.Join(dir, "loss")); err != nil {
		return err
	}
	return Curves("Accuracy", "accuracy", []Series{{"train", ta}, {"validation", va}}, filepath.Join(dir, "accuracy"))
}

// confusionGrid adapts a confusion matrix to plotter.GridXYZ, row 0 on top.
type confusionGrid struct{ c *eval.Confusion }

func (g confusionGrid) Dims() (int, int)   { return len(g.c.M), len(g.c.M) }
func (g confusionGrid) X(c int) float64    { return float64(c) }
func (g confusionGrid) Y(r int) float64    { return float64(r) }
func (g confusionGrid) Z(c, r int) float64 { return float64(g.c.M[len(g.c.M)-1-r][c]) }

// ConfusionHeatmap draws the matrix with its counts (rows: true class,
// columns: predicted) and saves base.png / base.svg.
func ConfusionHeatmap(c *eval.Confusion, title, base string) error {
	n := len(c.M)
	maxV := 1.0
	for _, row := range c.M {
		for _, v := range row {
			maxV = math.Max(maxV, float64(v))
		}
	}
	pal := moreland.SmoothBlueRed()
	pal.SetMin(0)
	pal.SetMax(maxV)
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "predicted"
	p.Y.Label.Text = "true"
	hm := plotter.NewHeatMap(confusionGrid{c}, pal.Palette(64))
	hm.Min, hm.Max = 0, maxV
	p.Add(hm)
	var xys plotter.XYs
	var labels []string
	for r := range n {
		for col := range n {
			xys = append(xys, plotter.XY{X: float64(col), Y: float64(n - 1 - r)})
			labels = append(labels, fmt.Sprint(c.M[r][col]))
		}
	}
	lab, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: labels})
	if err != nil {
		return err
	}
	for i := range lab.TextStyle {
		lab.TextStyle[i].XAlign = draw.XCenter
		lab.TextStyle[i].YAlign = draw.YCenter
		lab.TextStyle[i].Color = color.Black
	}
	p.Add(lab)
	var xt, yt []plot.Tick
	for i, name := range c.Classes {
		short := abbreviate(name)
		xt = append(xt, plot.Tick{Value: float64(i), Label: short})
		yt = append(yt, plot.Tick{Value: float64(n - 1 - i), Label: short})
	}
	p.X.Tick.Marker = plot.ConstantTicks(xt)
	p.Y.Tick.Marker = plot.ConstantTicks(yt)
	p.X.Tick.Label.Rotation = math.Pi / 4
	p.X.Tick.Label.XAlign = draw.XRight
	size := vg.Length(4+n) * 1.6 * vg.Centimeter
	return save(p, size, size, base)
}

// abbreviate shortens "female dorsal left" to "F-D-L".
func abbreviate(class string) string {
	f := strings.Fields(class)
	if len(f) < 2 {
		return class
	}
	var b []string
	for _, w := range f {
		b = append(b, strings.ToUpper(w[:1]))
	}
	return strings.Join(b, "-")
}
