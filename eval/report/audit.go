package report

import (
	"encoding/json"
	"fmt"
	"image/color"
	"math"
	"path/filepath"
	"strings"

	"github.com/handnet/handnet/eval"
	"github.com/handnet/handnet/handnet/runtime/fileio"
	"github.com/handnet/handnet/handnet/runtime/rundir"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Published is a figure the study reported for a configuration (0: none).
type Published struct {
	Val  float64 `json:"val_acc,omitempty"`
	Test float64 `json:"test_acc,omitempty"`
}

// String shows the figure and what it measured ("96.09 % (test)").
func (p Published) String() string {
	switch {
	case p.Test > 0 && p.Val > 0:
		return fmt.Sprintf("%.2f %% (test), %.2f %% (val)", 100*p.Test, 100*p.Val)
	case p.Test > 0:
		return fmt.Sprintf("%.2f %% (test)", 100*p.Test)
	case p.Val > 0:
		return fmt.Sprintf("%.2f %% (val)", 100*p.Val)
	}
	return "—"
}

// AuditRun is one run of an audit: a configuration trained and tested
// under one protocol with one repeat's split and seed.
type AuditRun struct {
	Config   string `json:"config"` // e.g. cnn, resnet18-none
	Model    string `json:"model"`  // cnn or resnet18
	Freeze   string `json:"freeze,omitempty"`
	Protocol string `json:"protocol"` // random or subject
	Repeat   int    `json:"repeat"`   // 1-based
	// SplitSeed draws the split, TrainSeed the initialisation, shuffling
	// and dropout (handnet's one --seed: the two are equal).
	SplitSeed uint64  `json:"split_seed"`
	TrainSeed uint64  `json:"train_seed"`
	BestVal   float64 `json:"best_val_acc"`
	Test      float64 `json:"test_acc"`
	// Gender, Aspect and Side are the test accuracies of each factor of
	// the 8 classes alone (dorsal/palmar for aspect, left/right for side);
	// an audit of gender labels measures the gender only.
	Gender     float64  `json:"gender_acc"`
	Aspect     *float64 `json:"aspect_acc,omitempty"`
	Side       *float64 `json:"side_acc,omitempty"`
	TestImages int      `json:"test_images"`
	Folder     string   `json:"folder"` // the run folder, relative to the audit's
}

// Factors are the measures an audit of the 8 classes summarises, in
// order; an audit of gender labels has the first two.
var Factors = []string{"test", "gender", "aspect", "side"}

// factors are the measures of a's labels.
func (a *Audit) factors() []string {
	if a.Labels == "gender" {
		return Factors[:2]
	}
	return Factors
}

// Value is the run's accuracy of a factor ("test": all its classes), and
// whether the run measured it.
func (r AuditRun) Value(factor string) (float64, bool) {
	opt := func(v *float64) (float64, bool) {
		if v == nil {
			return 0, false
		}
		return *v, true
	}
	switch factor {
	case "gender":
		return r.Gender, true
	case "aspect":
		return opt(r.Aspect)
	case "side":
		return opt(r.Side)
	}
	return r.Test, true
}

// AuditSummary summarises one configuration under one protocol over its
// repeats, with Student-t intervals.
type AuditSummary struct {
	Config    string    `json:"config"`
	Title     string    `json:"title"`
	Protocol  string    `json:"protocol"`
	Published Published `json:"published"`
	Intervals
}

// AuditGap is a configuration's leakage gap: random-split minus
// subject-split accuracy, with Welch's intervals.
type AuditGap struct {
	Config string `json:"config"`
	Title  string `json:"title"`
	Intervals
}

// Intervals are a summary's or a gap's intervals, one per factor.
type Intervals struct {
	Test   eval.Interval `json:"test"`
	Gender eval.Interval `json:"gender"`
	Aspect eval.Interval `json:"aspect,omitzero"` // absent for gender labels
	Side   eval.Interval `json:"side,omitzero"`
}

// Of is the interval of a factor ("test": all the classes).
func (iv Intervals) Of(factor string) eval.Interval { return *iv.field(factor) }

func (iv *Intervals) field(factor string) *eval.Interval {
	switch factor {
	case "gender":
		return &iv.Gender
	case "aspect":
		return &iv.Aspect
	case "side":
		return &iv.Side
	}
	return &iv.Test
}

// Audit is a finished audit: every run, the summaries and the gaps.
type Audit struct {
	Data      string         `json:"data"`
	Labels    string         `json:"labels"` // class8 (the study's) or gender
	Epochs    int            `json:"epochs"`
	Repeats   int            `json:"repeats"`
	Level     float64        `json:"level"`
	Protocols []string       `json:"protocols"`
	Runs      []AuditRun     `json:"runs"`
	Summaries []AuditSummary `json:"summaries"`
	Gaps      []AuditGap     `json:"gaps"`
	Findings  string         `json:"findings"`
}

// Summarise computes the summaries (one per configuration and protocol,
// in the order of configs and protocols) and the gaps (one per
// configuration run under both random and subject) of a's runs at
// a.Level, then the findings. titles and published are by configuration.
func (a *Audit) Summarise(configs []string, titles map[string]string, published map[string]Published) error {
	a.Summaries, a.Gaps = []AuditSummary{}, []AuditGap{}
	values := func(config, protocol, factor string) []float64 {
		var v []float64
		for _, r := range a.Runs {
			if x, ok := r.Value(factor); ok && r.Config == config && r.Protocol == protocol {
				v = append(v, x)
			}
		}
		return v
	}
	for _, c := range configs {
		for _, p := range a.Protocols {
			s := AuditSummary{Config: c, Title: titles[c], Protocol: p, Published: published[c]}
			for _, f := range a.factors() {
				iv, err := eval.MeanCI(values(c, p, f), a.Level)
				if err != nil {
					return fmt.Errorf("%s, %s split, %s: %w", c, p, f, err)
				}
				*s.field(f) = iv
			}
			a.Summaries = append(a.Summaries, s)
		}
		if !a.has("random") || !a.has("subject") || a.Repeats < 2 {
			continue
		}
		g := AuditGap{Config: c, Title: titles[c]}
		for _, f := range a.factors() {
			iv, err := eval.DiffCI(values(c, "random", f), values(c, "subject", f), a.Level)
			if err != nil {
				return fmt.Errorf("%s, gap of %s: %w", c, f, err)
			}
			*g.field(f) = iv
		}
		a.Gaps = append(a.Gaps, g)
	}
	a.Findings = a.findings()
	return nil
}

func (a *Audit) has(protocol string) bool {
	for _, p := range a.Protocols {
		if p == protocol {
			return true
		}
	}
	return false
}

// Summary returns the summary of a configuration under a protocol.
func (a *Audit) Summary(config, protocol string) (AuditSummary, bool) {
	for _, s := range a.Summaries {
		if s.Config == config && s.Protocol == protocol {
			return s, true
		}
	}
	return AuditSummary{}, false
}

// pts formats a difference of accuracies in percentage points.
func pts(v float64) string { return fmt.Sprintf("%+.1f", 100*v) }

func ivText(iv eval.Interval) string {
	if !iv.Defined() {
		return fmt.Sprintf("%.2f %%", 100*iv.Mean)
	}
	return fmt.Sprintf("%.2f %% [%.2f, %.2f]", 100*iv.Mean, 100*iv.Low, 100*iv.High)
}

func gapText(iv eval.Interval) string {
	return fmt.Sprintf("%s [%s, %s]", pts(iv.Mean), pts(iv.Low), pts(iv.High))
}

// findings writes the plain-language paragraph: per configuration, the
// gap and whether its interval excludes zero, and which factor carries it.
func (a *Audit) findings() string {
	lvl := fmt.Sprintf("%.0f %%", 100*a.Level)
	var out []string
	for _, g := range a.Gaps {
		r, _ := a.Summary(g.Config, "random")
		s, _ := a.Summary(g.Config, "subject")
		var b strings.Builder
		fmt.Fprintf(&b, "**%s**: %.2f %% on random splits, %.2f %% on subject-disjoint splits (%d repeats each); ", g.Title, 100*r.Test.Mean, 100*s.Test.Mean, r.Test.N)
		switch {
		case g.Test.Low > 0:
			fmt.Fprintf(&b, "the random split reads %.1f points higher (%s interval %+.1f to %+.1f points), so part of its accuracy comes from recognising people seen in training.", 100*g.Test.Mean, lvl, 100*g.Test.Low, 100*g.Test.High)
		case g.Test.High < 0:
			fmt.Fprintf(&b, "the subject split reads %.1f points higher (%s interval %+.1f to %+.1f points): no sign of identity leakage.", -100*g.Test.Mean, lvl, 100*g.Test.Low, 100*g.Test.High)
		default:
			fmt.Fprintf(&b, "the gap of %+.1f points has a %s interval (%+.1f to %+.1f) that includes zero: no leakage shown at this number of repeats.", 100*g.Test.Mean, lvl, 100*g.Test.Low, 100*g.Test.High)
		}
		// The factor whose accuracy drops the most carries the gap.
		carrier, most := "", 0.0
		for _, f := range a.factors()[1:] {
			if m := g.Of(f).Mean; m > most {
				carrier, most = f, m
			}
		}
		if carrier != "" && g.Test.Low > 0 && a.Labels == "gender" {
			fmt.Fprintf(&b, " The labels are the gender alone: the gap is the gender's (%s).", sig(g.Gender))
		} else if carrier != "" && g.Test.Low > 0 {
			name := map[string]string{"gender": "gender", "aspect": "aspect (dorsal/palmar)", "side": "side (left/right)"}[carrier]
			fmt.Fprintf(&b, " The gap is carried by %s: its accuracy falls by %.1f points (%s), against %s for gender, %s for aspect and %s for side.",
				name, 100*most, sig(g.Of(carrier)), pts(g.Gender.Mean), pts(g.Aspect.Mean), pts(g.Side.Mean))
		}
		if p := r.Published.Test; p > 0 && r.Test.Defined() {
			where := "inside"
			if p > r.Test.High {
				where = "above"
			} else if p < r.Test.Low {
				where = "below"
			}
			fmt.Fprintf(&b, " The study's published %.2f %% lies %s this audit's random-split interval", 100*p, where)
			if s.Test.Defined() {
				fmt.Fprintf(&b, "; the subject-disjoint estimate is %.2f %% to %.2f %%", 100*s.Test.Low, 100*s.Test.High)
			}
			b.WriteString(".")
		}
		out = append(out, b.String())
	}
	if len(out) == 0 {
		return "No gap measured: run both protocols (random and subject) with 2 or more repeats."
	}
	return strings.Join(out, "\n\n")
}

// sig says whether a gap's interval excludes zero.
func sig(iv eval.Interval) string {
	if iv.Low > 0 || iv.High < 0 {
		return fmt.Sprintf("interval %s to %s, excluding zero", pts(iv.Low), pts(iv.High))
	}
	return fmt.Sprintf("interval %s to %s, including zero", pts(iv.Low), pts(iv.High))
}

// AuditMarkdownText renders the audit's tables and findings.
func AuditMarkdownText(a *Audit) string {
	var b strings.Builder
	lvl := fmt.Sprintf("%.0f %%", 100*a.Level)
	classes := "the 8 classes (gender × aspect × side)"
	if a.Labels == "gender" {
		classes = "gender labels"
	}
	fmt.Fprintf(&b, "# Audit: the study's headline models, random versus subject-disjoint splits\n\n")
	fmt.Fprintf(&b, "Data `%s`, %s; %d epochs; %d repeats per configuration and protocol, each with a new split and a new seed "+
		"for initialisation, shuffling and dropout. **random**: the study's 68/17/15 split of the images (the same people in "+
		"training and test). **subject**: people partitioned into train/validation/test with about the same image fractions "+
		"and class shares, no person in two parts. Accuracy on the test split; intervals are %s "+
		"Student-t confidence intervals of the mean over repeats; gaps are random − subject in percentage points with Welch's interval.\n\n",
		a.Data, classes, a.Epochs, a.Repeats, lvl)
	fs := a.factors()[1:]
	head := func(first string) string {
		h := first
		for _, f := range fs {
			h += " | " + f
		}
		return h
	}
	align := strings.Repeat("---:|", len(fs))
	b.WriteString("## Test accuracy\n\n| configuration | protocol | n | " + head("mean ["+lvl+" CI] | sd") + " | published |\n|---|---|---:|---:|---:|" + align + "---|\n")
	for _, s := range a.Summaries {
		fmt.Fprintf(&b, "| %s | %s | %d | %s | %.2f |", s.Title, s.Protocol, s.Test.N, ivText(s.Test), 100*s.Test.SD)
		for _, f := range fs {
			fmt.Fprintf(&b, " %.2f %% |", 100*s.field(f).Mean)
		}
		fmt.Fprintf(&b, " %s |\n", s.Published)
	}
	if len(a.Gaps) > 0 {
		b.WriteString("\n## Leakage gap (random − subject, points)\n\n| configuration | " + head("all classes") + " |\n|---|---:|" + align + "\n")
		for _, g := range a.Gaps {
			fmt.Fprintf(&b, "| %s | %s |", g.Title, gapText(g.Test))
			for _, f := range fs {
				fmt.Fprintf(&b, " %s |", gapText(g.Of(f)))
			}
			b.WriteString("\n")
		}
	}
	fmt.Fprintf(&b, "\n![test accuracy by protocol, means with %s intervals](%s.png)\n\n## Findings\n\n%s\n", lvl, rundir.AuditPlot, a.Findings)
	b.WriteString("\n## Runs\n\n| configuration | protocol | repeat | seed | best val | " + head("test") + " | |\n|---|---|---:|---:|---:|---:|" + align + "---|\n")
	for _, r := range a.Runs {
		fmt.Fprintf(&b, "| %s | %s | %d | %d | %.2f %% | %.2f %% |", r.Config, r.Protocol, r.Repeat, r.TrainSeed, 100*r.BestVal, 100*r.Test)
		for _, f := range fs {
			v, _ := r.Value(f)
			fmt.Fprintf(&b, " %.2f %% |", 100*v)
		}
		fmt.Fprintf(&b, " [report](%s/%s) |\n", r.Folder, rundir.Report)
	}
	return b.String()
}

// WriteAudit writes audit.json, audit.md and audit.png/.svg into dir.
func WriteAudit(dir string, a *Audit) error {
	if err := AuditChart(a, filepath.Join(dir, rundir.AuditPlot)); err != nil {
		return err
	}
	js, err := json.MarshalIndent(a, "", "  ")
	if err != nil {
		return err
	}
	if err := fileio.WriteAtomic(filepath.Join(dir, rundir.AuditJSON), append(js, '\n')); err != nil {
		return err
	}
	return fileio.WriteAtomic(filepath.Join(dir, rundir.AuditMarkdown), []byte(AuditMarkdownText(a)))
}

// meanErrs are points with vertical error bars.
type meanErrs struct {
	plotter.XYs
	plotter.YErrors
}

// sans sets a plot's text in Liberation Sans.
func sans(p *plot.Plot) {
	for _, st := range []*draw.TextStyle{&p.Title.TextStyle, &p.X.Label.TextStyle, &p.Y.Label.TextStyle, &p.X.Tick.Label, &p.Y.Tick.Label, &p.Legend.TextStyle} {
		st.Font.Variant = "Sans"
	}
}

// AuditChart draws each configuration's mean test accuracy per protocol
// with its interval bars, and the study's published figure, as
// base.png and base.svg.
func AuditChart(a *Audit, base string) error {
	p := plot.New()
	sans(p)
	p.Title.Text = fmt.Sprintf("Test accuracy: means over %d repeats, %.0f %% intervals", a.Repeats, 100*a.Level)
	p.Y.Label.Text = "test accuracy (%)"
	p.X.Label.Text = "configuration"
	p.Add(plotter.NewGrid())
	var configs []string
	titles := map[string]string{}
	for _, s := range a.Summaries {
		if _, ok := titles[s.Config]; !ok {
			configs = append(configs, s.Config)
			titles[s.Config] = s.Title
		}
	}
	colors := map[string]color.Color{"random": color.RGBA{200, 70, 50, 255}, "subject": color.RGBA{40, 100, 180, 255}}
	shapes := map[string]draw.GlyphDrawer{"random": draw.CircleGlyph{}, "subject": draw.BoxGlyph{}}
	lo, hi := 100.0, 0.0
	for k, proto := range a.Protocols {
		var me meanErrs
		for i, c := range configs {
			s, ok := a.Summary(c, proto)
			if !ok {
				continue
			}
			x := float64(i) + 0.18*(float64(k)-float64(len(a.Protocols)-1)/2)
			m := 100 * s.Test.Mean
			h := 0.0
			if s.Test.Defined() {
				h = 100 * s.Test.HalfWidth()
			}
			me.XYs = append(me.XYs, plotter.XY{X: x, Y: m})
			me.YErrors = append(me.YErrors, struct{ Low, High float64 }{h, h})
			lo, hi = math.Min(lo, m-h), math.Max(hi, m+h)
		}
		if len(me.XYs) == 0 {
			continue
		}
		col := colors[proto]
		if col == nil {
			col = color.Gray{90}
		}
		sc, err := plotter.NewScatter(me.XYs)
		if err != nil {
			return err
		}
		sc.GlyphStyle.Color, sc.GlyphStyle.Radius = col, vg.Points(4)
		if sh := shapes[proto]; sh != nil {
			sc.GlyphStyle.Shape = sh
		}
		eb, err := plotter.NewYErrorBars(me)
		if err != nil {
			return err
		}
		eb.LineStyle.Color, eb.LineStyle.Width, eb.CapWidth = col, vg.Points(1.5), vg.Points(8)
		p.Add(eb, sc)
		p.Legend.Add(proto+" split", sc)
	}
	var pub plotter.XYs
	for i, c := range configs {
		s, _ := a.Summary(c, a.Protocols[0])
		if v := s.Published.Test; v > 0 {
			pub = append(pub, plotter.XY{X: float64(i), Y: 100 * v})
		} else if v := s.Published.Val; v > 0 {
			pub = append(pub, plotter.XY{X: float64(i), Y: 100 * v})
		}
	}
	if len(pub) > 0 {
		sc, err := plotter.NewScatter(pub)
		if err != nil {
			return err
		}
		sc.GlyphStyle.Shape, sc.GlyphStyle.Color, sc.GlyphStyle.Radius = draw.CrossGlyph{}, color.Black, vg.Points(5)
		p.Add(sc)
		p.Legend.Add("published (test; val where no test)", sc)
		for _, q := range pub {
			lo, hi = math.Min(lo, q.Y), math.Max(hi, q.Y)
		}
	}
	var ticks []plot.Tick
	for i, c := range configs {
		ticks = append(ticks, plot.Tick{Value: float64(i), Label: titles[c]})
	}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	p.X.Min, p.X.Max = -0.6, float64(len(configs))-0.4
	pad := math.Max(2, 0.08*(hi-lo))
	p.Y.Min, p.Y.Max = math.Max(0, lo-pad), math.Min(100, hi+pad)
	if p.Y.Max <= p.Y.Min {
		p.Y.Min, p.Y.Max = 0, 100
	}
	p.Legend.Top, p.Legend.Left = false, true
	p.Legend.YOffs = -vg.Points(2)
	w := vg.Length(8+4*len(configs)) * vg.Centimeter
	return save(p, w, 11*vg.Centimeter, base)
}
