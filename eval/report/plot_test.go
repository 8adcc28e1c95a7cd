package report

import (
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/handnet/handnet/eval"
	"github.com/handnet/handnet/train"
	"github.com/handnet/handnet/vision"
)

// plotDir is where the plot tests draw: $HANDNET_PLOT_DIR to look at the
// figures, else a temporary folder.
func plotDir(t *testing.T) string {
	if d := os.Getenv("HANDNET_PLOT_DIR"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	return t.TempDir()
}

// pngWidth is the width in pixels of a PNG file.
func pngWidth(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg, err := png.DecodeConfig(f)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Width
}

// TestConfusionHeatmap: colour by the percentage of the true class (a
// perfect small class as dark as a perfect large one), counts and row
// percentages in the cells, class names spelled out, a colour bar, sans
// text, a large figure.
func TestConfusionHeatmap(t *testing.T) {
	classes := vision.Classes8.Classes()
	c := &eval.Confusion{Classes: classes, M: make([][]int, 8)}
	for i := range c.M {
		c.M[i] = make([]int, 8)
		c.M[i][i] = 20
	}
	c.M[0][0] = 12               // 12 of 12: 100 %
	c.M[1][1], c.M[1][5] = 18, 6 // 18 of 24: 75 %
	c.M[7][7], c.M[7][3] = 0, 5  // an all-wrong class
	g := rowPercentGrid{c}
	if z00, z11 := g.Z(0, 7), g.Z(1, 6); z00 != 100 || z11 != 75 {
		t.Errorf("row percentages: 12/12 -> %v, 18/24 -> %v; want 100 and 75", z00, z11)
	}
	cm := sequential()
	lo, _ := cm.At(0)
	hi, _ := cm.At(100)
	if textOn(lo) != color.White || textOn(hi) != color.Black {
		t.Errorf("text on the darkest cell %v, on the lightest %v: want white, black", textOn(lo), textOn(hi))
	}
	dir := plotDir(t)
	base := filepath.Join(dir, "confusion")
	if err := ConfusionHeatmap(c, "Confusion matrix (test)", base); err != nil {
		t.Fatal(err)
	}
	if w := pngWidth(t, base+".png"); w < 1000 {
		t.Errorf("confusion.png is %d px wide, want at least 1000", w)
	}
	svg, err := os.ReadFile(base + ".svg")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{">female dorsal left<", ">male palmar right<", ">100 %<", ">75 %<", ">18<", ">25 %<", "% of the true class", "Liberation Sans", ">predicted class<", ">true class<"} {
		if !strings.Contains(string(svg), want) {
			t.Errorf("confusion.svg lacks %q", want)
		}
	}
	if strings.Contains(string(svg), ">F-D-L<") || strings.Contains(string(svg), "Liberation Serif") {
		t.Errorf("confusion.svg still has abbreviated classes or serif text")
	}
}

// TestHistoryPlots: accuracy in %, the best epoch marked on both curves,
// large sans-serif figures.
func TestHistoryPlots(t *testing.T) {
	h := train.History{{Epoch: 1, TrainLoss: 2, TrainAcc: 0.2, ValLoss: 1.9, ValAcc: 0.3}, {Epoch: 2, TrainLoss: 1.5, TrainAcc: 0.4, ValLoss: 1.4, ValAcc: 0.55},
		{Epoch: 3, TrainLoss: 1.1, TrainAcc: 0.6, ValLoss: 1.5, ValAcc: 0.5}, {Epoch: 4, TrainLoss: 0.9, TrainAcc: 0.7, ValLoss: 1.6, ValAcc: 0.52}}
	dir := plotDir(t)
	if err := HistoryPlots(h, dir); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"loss", "accuracy"} {
		if w := pngWidth(t, filepath.Join(dir, name+".png")); w < 1100 {
			t.Errorf("%s.png is %d px wide, want at least 1100", name, w)
		}
		svg, _ := os.ReadFile(filepath.Join(dir, name+".svg"))
		for _, want := range []string{"best epoch (2)", "Liberation Sans"} {
			if !strings.Contains(string(svg), want) {
				t.Errorf("%s.svg lacks %q", name, want)
			}
		}
	}
	svg, _ := os.ReadFile(filepath.Join(dir, "accuracy.svg"))
	if !strings.Contains(string(svg), "accuracy (%)") || !strings.Contains(string(svg), ">60<") {
		t.Errorf("accuracy.svg: no axis in %% (label %q, a tick at 60)", "accuracy (%)")
	}
}
