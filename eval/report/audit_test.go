package report

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/handnet/handnet/eval"
	"github.com/handnet/handnet/handnet/runtime/rundir"
)

// TestAuditSummarise: summaries and gaps from known per-run figures, the
// findings naming the factor that carries the gap (or saying there is
// none), and the files written.
func TestAuditSummarise(t *testing.T) {
	a := &Audit{Data: "d", Epochs: 3, Repeats: 3, Level: 0.95, Protocols: []string{"random", "subject"}}
	add := func(config, proto string, test, gender, aspect []float64) {
		for i := range test {
			side := 0.9
			a.Runs = append(a.Runs, AuditRun{Config: config, Protocol: proto, Repeat: i + 1, Test: test[i], Gender: gender[i], Aspect: &aspect[i], Side: &side, Folder: config + "-" + proto})
		}
	}
	// leaky: aspect carries the gap; flat: the same figures both ways.
	add("leaky", "random", []float64{0.90, 0.92, 0.94}, []float64{0.95, 0.95, 0.95}, []float64{0.97, 0.98, 0.99})
	add("leaky", "subject", []float64{0.60, 0.62, 0.64}, []float64{0.93, 0.94, 0.95}, []float64{0.67, 0.68, 0.69})
	add("flat", "random", []float64{0.70, 0.75, 0.80}, []float64{0.9, 0.9, 0.9}, []float64{0.8, 0.8, 0.8})
	add("flat", "subject", []float64{0.72, 0.76, 0.78}, []float64{0.9, 0.9, 0.9}, []float64{0.8, 0.8, 0.8})
	err := a.Summarise([]string{"leaky", "flat"}, map[string]string{"leaky": "Leaky", "flat": "Flat"},
		map[string]Published{"leaky": {Test: 0.9988}})
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Summaries) != 4 || len(a.Gaps) != 2 {
		t.Fatalf("%d summaries, %d gaps", len(a.Summaries), len(a.Gaps))
	}
	s, _ := a.Summary("leaky", "random")
	want, _ := eval.MeanCI([]float64{0.90, 0.92, 0.94}, 0.95)
	if s.Test != want || s.Published.Test != 0.9988 {
		t.Errorf("leaky random: %+v, want %+v", s.Test, want)
	}
	gap, _ := eval.DiffCI([]float64{0.90, 0.92, 0.94}, []float64{0.60, 0.62, 0.64}, 0.95)
	if a.Gaps[0].Test != gap || math.Abs(gap.Mean-0.30) > 1e-12 {
		t.Errorf("gap %+v, want %+v", a.Gaps[0].Test, gap)
	}
	leaky, flat, _ := strings.Cut(a.Findings, "\n\n")
	for _, w := range []string{"**Leaky**", "reads 30.0 points higher", "carried by aspect (dorsal/palmar)", "falls by 30.0 points", "published 99.88 % lies above"} {
		if !strings.Contains(leaky, w) {
			t.Errorf("findings lack %q:\n%s", w, leaky)
		}
	}
	if !strings.Contains(flat, "includes zero: no leakage shown") || strings.Contains(flat, "carried by") {
		t.Errorf("findings for no gap:\n%s", flat)
	}
	dir := t.TempDir()
	if err := WriteAudit(dir, a); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, rundir.AuditMarkdown))
	if err != nil || !strings.Contains(string(md), "| Leaky | random | 3 | 92.00 % [") || !strings.Contains(string(md), "| 99.88 % (test) |") {
		t.Errorf("audit.md (%v):\n%s", err, md)
	}
	for _, f := range []string{rundir.AuditJSON, rundir.AuditPlot + ".png", rundir.AuditPlot + ".svg"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	// Gender labels: no aspect or side anywhere.
	g := &Audit{Labels: "gender", Repeats: 2, Level: 0.95, Protocols: []string{"random", "subject"}}
	for i, v := range []float64{0.9, 0.95, 0.5, 0.55} {
		g.Runs = append(g.Runs, AuditRun{Config: "c", Protocol: []string{"random", "subject"}[i/2], Test: v, Gender: v})
	}
	if err := g.Summarise([]string{"c"}, map[string]string{"c": "C"}, nil); err != nil {
		t.Fatal(err)
	}
	js, _ := json.Marshal(g)
	if len(g.Gaps) != 1 || strings.Contains(string(js), "aspect") || strings.Contains(AuditMarkdownText(g), "aspect") || !strings.Contains(g.Findings, "the gap is the gender's") {
		t.Errorf("gender labels: %s\n%s", js, AuditMarkdownText(g))
	}
	// One repeat: no intervals, no gaps, and findings that say why.
	one := &Audit{Labels: "gender", Repeats: 1, Level: 0.95, Protocols: []string{"random", "subject"},
		Runs: []AuditRun{{Config: "c", Protocol: "random", Test: 0.5}, {Config: "c", Protocol: "subject", Test: 0.4}}}
	if err := one.Summarise([]string{"c"}, nil, nil); err != nil || len(one.Gaps) != 0 || !strings.Contains(one.Findings, "2 or more repeats") {
		t.Errorf("one repeat: %v, %d gaps, %q", err, len(one.Gaps), one.Findings)
	}
	if err := WriteAudit(t.TempDir(), one); err != nil {
		t.Errorf("one repeat: %v", err)
	}
}
