// Package report turns a run's history and evaluation into plots (PNG and
// SVG, drawn with gonum/plot), a Markdown report and metrics.json.
//
// Floor 5 (reporting) of handnet's layering: it imports packages of floors 0–5 only
// (README, "Packages"; tools/floors checks it).
package report

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"path/filepath"
	"strings"

	"github.com/handnet/handnet/eval"
	"github.com/handnet/handnet/handnet/runtime/fileio"
	"github.com/handnet/handnet/handnet/runtime/rundir"
	"github.com/handnet/handnet/train"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/palette"
	"gonum.org/v1/plot/palette/moreland"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// Series is one named curve over epochs 1..len(Y).
type Series struct {
	Name string
	Y    []float64
}

// Figures: sans-serif text at sizes read from a slide or a report page,
// PNGs at pngDPI (a 20 cm figure is 1181 px wide).
var (
	sansFont = font.Font{Typeface: "Liberation", Variant: "Sans"}
	pngDPI   = 150
)

// newPlot returns a plot with sans-serif text: title 15 pt, axis labels
// 13 pt, ticks and legend 11 pt.
func newPlot(title string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font = font.From(sansFont, 15)
	p.Title.Padding = 6
	for _, a := range []*plot.Axis{&p.X, &p.Y} {
		a.Label.TextStyle.Font = font.From(sansFont, 13)
		a.Tick.Label.Font = font.From(sansFont, 11)
	}
	p.Legend.TextStyle.Font = font.From(sansFont, 11)
	return p
}

// save writes p as base.png and base.svg (through temporary files).
func save(p *plot.Plot, w, h vg.Length, base string) error {
	return saveCanvas(w, h, base, p.Draw)
}

// saveCanvas draws a figure of w×h with draw into base.png (at pngDPI)
// and base.svg, each written atomically (fileio.WriteToAtomic).
func saveCanvas(w, h vg.Length, base string, drawFn func(draw.Canvas)) error {
	for _, ext := range []string{".png", ".svg"} {
		var c interface {
			vg.CanvasSizer
			io.WriterTo
		}
		if ext == ".png" {
			c = vgimg.PngCanvas{Canvas: vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(pngDPI))}
		} else {
			c = vgsvg.New(w, h)
		}
		drawFn(draw.New(c))
		if err := fileio.WriteToAtomic(rundir.Plot(base, ext), c); err != nil {
			return fmt.Errorf("plot %s: %w", rundir.Plot(base, ext), err)
		}
	}
	return nil
}

// Curves draws series against the epoch and saves base.png / base.svg.
// The legend goes top-left for rising curves (accuracy), else top-right.
func Curves(title, ylabel string, series []Series, base string) error {
	return curves(title, ylabel, series, 0, base)
}

// curves is Curves with the best epoch (1-based; 0: none) marked by a
// dashed vertical line named in the legend.
func curves(title, ylabel string, series []Series, best int, base string) error {
	p := newPlot(title)
	p.X.Label.Text = "epoch"
	p.Y.Label.Text = ylabel
	p.Add(plotter.NewGrid())
	lo, hi := math.Inf(1), math.Inf(-1)
	for k, s := range series {
		pts := make(plotter.XYs, len(s.Y))
		for i, y := range s.Y {
			pts[i] = plotter.XY{X: float64(i + 1), Y: y}
			if !math.IsNaN(y) && !math.IsInf(y, 0) {
				lo, hi = math.Min(lo, y), math.Max(hi, y)
			}
		}
		l, sc, err := plotter.NewLinePoints(pts)
		if err != nil {
			return err
		}
		l.Color = seriesColors[k%len(seriesColors)]
		l.Width = vg.Points(2)
		sc.Color, sc.Shape, sc.Radius = l.Color, plotutil.Shape(k), vg.Points(3.5)
		p.Add(l, sc)
		p.Legend.Add(s.Name, l, sc)
	}
	if best > 0 && lo <= hi {
		pad := math.Max((hi-lo)*0.05, 1e-9)
		l, err := plotter.NewLine(plotter.XYs{{X: float64(best), Y: lo - pad}, {X: float64(best), Y: hi + pad}})
		if err != nil {
			return err
		}
		l.Color = color.Gray{Y: 90}
		l.Width = vg.Points(1.5)
		l.Dashes = []vg.Length{vg.Points(5), vg.Points(4)}
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("best epoch (%d)", best), l)
	}
	p.Legend.Top = true
	p.Legend.Left = strings.HasPrefix(ylabel, "accuracy")
	p.X.Tick.Marker = integerTicks{}
	return save(p, 20*vg.Centimeter, 12*vg.Centimeter, base)
}

// seriesColors tell curves apart for the colour-blind too (matplotlib's
// and TensorBoard's blue and orange first).
var seriesColors = []color.Color{color.NRGBA{0x1f, 0x77, 0xb4, 255}, color.NRGBA{0xff, 0x7f, 0x0e, 255},
	color.NRGBA{0x2c, 0xa0, 0x2c, 255}, color.NRGBA{0x94, 0x67, 0xbd, 255}, color.NRGBA{0x8c, 0x56, 0x4b, 255},
	color.NRGBA{0xe3, 0x77, 0xc2, 255}, color.NRGBA{0x7f, 0x7f, 0x7f, 255}, color.NRGBA{0xbc, 0xbd, 0x22, 255}}

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
// (loss.png/.svg and accuracy.png/.svg): accuracy in %, as the tables
// show it, and the best epoch (highest validation accuracy, the one the
// best checkpoint holds) marked on both.
func HistoryPlots(h train.History, dir string) error {
	var tl, vl, ta, va []float64
	for _, e := range h {
		tl, vl, ta, va = append(tl, e.TrainLoss), append(vl, e.ValLoss), append(ta, 100*e.TrainAcc), append(va, 100*e.ValAcc)
	}
	best := h.Best()
	if err := curves("Loss", "cross-entropy", []Series{{"train", tl}, {"validation", vl}}, best, filepath.Join(dir, rundir.LossPlot)); err != nil {
		return err
	}
	return curves("Accuracy", "accuracy (%)", []Series{{"train", ta}, {"validation", va}}, best, filepath.Join(dir, rundir.AccuracyPlot))
}

// rowPercentGrid is a confusion matrix as plotter.GridXYZ, row 0 on top,
// each cell the percentage of its true class (row) predicted as its
// column: a perfect class is as dark as any other perfect class whatever
// its size.
type rowPercentGrid struct{ c *eval.Confusion }

func (g rowPercentGrid) Dims() (int, int)   { return len(g.c.M), len(g.c.M) }
func (g rowPercentGrid) X(c int) float64    { return float64(c) }
func (g rowPercentGrid) Y(r int) float64    { return float64(r) }
func (g rowPercentGrid) Z(c, r int) float64 { return rowPercent(g.c, len(g.c.M)-1-r, c) }

// rowPercent is 100 × M[r][c] / (row r's total); 0 for an empty row.
func rowPercent(c *eval.Confusion, r, col int) float64 {
	total := 0
	for _, v := range c.M[r] {
		total += v
	}
	if total == 0 {
		return 0
	}
	return 100 * float64(c.M[r][col]) / float64(total)
}

// sequential is viridis (matplotlib's and scikit-learn's default): dark
// purple for 0 % to yellow for 100 %, luminance rising evenly, readable
// in grey and by the colour-blind.
func sequential() palette.ColorMap {
	cm, err := moreland.NewLuminance([]color.Color{
		color.NRGBA{0x44, 0x01, 0x54, 255}, color.NRGBA{0x3b, 0x52, 0x8b, 255}, color.NRGBA{0x21, 0x91, 0x8c, 255},
		color.NRGBA{0x5e, 0xc9, 0x62, 255}, color.NRGBA{0xfd, 0xe7, 0x25, 255}})
	if err != nil {
		panic(err) // constant controls, increasing in luminance
	}
	cm.SetMin(0)
	cm.SetMax(100)
	return cm
}

// textOn is black on light cells and white on dark ones (relative
// luminance under 0.4), as scikit-learn switches at the map's midpoint.
func textOn(c color.Color) color.Color {
	r, g, b, _ := c.RGBA()
	lin := func(v uint32) float64 {
		x := float64(v) / 0xffff
		if x <= 0.04045 {
			return x / 12.92
		}
		return math.Pow((x+0.055)/1.055, 2.4)
	}
	if 0.2126*lin(r)+0.7152*lin(g)+0.0722*lin(b) < 0.4 {
		return color.White
	}
	return color.Black
}

// ConfusionHeatmap draws the matrix (rows: true class, columns:
// predicted) coloured by the percentage of each true class, with a colour
// bar; each cell shows its count and that percentage in a colour that
// contrasts with the cell; classes are spelled out. It saves base.png /
// base.svg.
func ConfusionHeatmap(c *eval.Confusion, title, base string) error {
	n := len(c.M)
	cm := sequential()
	p := newPlot(title)
	p.X.Label.Text = "predicted class"
	p.Y.Label.Text = "true class"
	hm := plotter.NewHeatMap(rowPercentGrid{c}, cm.Palette(256))
	hm.Min, hm.Max = 0, 100
	p.Add(hm)
	var xys plotter.XYs
	var labels []string
	var colors []color.Color
	for r := range n {
		for col := range n {
			pct := rowPercent(c, r, col)
			xys = append(xys, plotter.XY{X: float64(col), Y: float64(n - 1 - r)})
			label := "0" // empty cells: the count alone, less ink
			if c.M[r][col] > 0 {
				label = fmt.Sprintf("%d\n%.0f %%", c.M[r][col], pct)
			}
			labels = append(labels, label)
			cell, err := cm.At(pct)
			if err != nil {
				cell = color.Black
			}
			colors = append(colors, textOn(cell))
		}
	}
	lab, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: labels})
	if err != nil {
		return err
	}
	cellFont := font.From(sansFont, font.Length(math.Max(8, 13-float64(n)/3)))
	for i := range lab.TextStyle {
		lab.TextStyle[i].Font = cellFont
		lab.TextStyle[i].XAlign = draw.XCenter
		lab.TextStyle[i].YAlign = draw.YCenter
		lab.TextStyle[i].Color = colors[i]
	}
	p.Add(lab)
	var xt, yt []plot.Tick
	for i, name := range c.Classes {
		xt = append(xt, plot.Tick{Value: float64(i), Label: name})
		yt = append(yt, plot.Tick{Value: float64(n - 1 - i), Label: name})
	}
	p.X.Tick.Marker = plot.ConstantTicks(xt)
	p.Y.Tick.Marker = plot.ConstantTicks(yt)
	p.X.Tick.Label.Rotation = math.Pi / 4
	p.X.Tick.Label.XAlign = draw.XRight
	p.X.Tick.Label.YAlign = draw.YTop

	bar := newPlot("")
	bar.HideX()
	bar.Y.Label.Text = "% of the true class"
	bar.Y.Padding = 0
	bar.Add(&plotter.ColorBar{ColorMap: cm, Vertical: true})
	bar.Y.Min, bar.Y.Max = 0, 100
	bar.Y.Tick.Marker = plot.ConstantTicks([]plot.Tick{{Value: 0, Label: "0 %"}, {Value: 25, Label: "25 %"}, {Value: 50, Label: "50 %"},
		{Value: 75, Label: "75 %"}, {Value: 100, Label: "100 %"}})

	side := vg.Length(6+1.9*float64(n)) * vg.Centimeter
	barW := 3 * vg.Centimeter
	return saveCanvas(side+barW, side, base, func(dc draw.Canvas) {
		p.Draw(draw.Crop(dc, 0, -barW, 0, 0))
		// The bar beside the matrix, spanning its height (the title and
		// the rotated class names take the top and the bottom).
		b := draw.Crop(dc, side+vg.Centimeter/2, -vg.Centimeter/2, 0, 0)
		b.Min.Y += side * 0.33
		b.Max.Y -= vg.Centimeter * 1.4
		bar.Draw(b)
	})
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
