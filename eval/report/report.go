package report

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/handnet/handnet/eval"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/fileio"
	"github.com/handnet/handnet/handnet/runtime/rundir"
	"github.com/handnet/handnet/train"
	"github.com/handnet/handnet/vision"
)

// Evaluation is a model's measured performance on one split.
type Evaluation struct {
	Split     string           `json:"split"`
	Images    int              `json:"images"`
	Accuracy  float64          `json:"accuracy"`
	Loss      float64          `json:"loss"`
	Confusion *eval.Confusion  `json:"confusion"`
	PerClass  []eval.ClassStat `json:"per_class"`
	Breakdown eval.Breakdown   `json:"errors"`
	Mistakes  []Mistake        `json:"most_confident_mistakes"`
	// MistakeMaps names the grid of the mistakes' class-activation maps
	// (rundir.MistakeMaps), when one was drawn.
	MistakeMaps string `json:"mistake_maps,omitempty"`
}

// Mistake is a misclassified image, named.
type Mistake struct {
	Image      string  `json:"image"`
	True       string  `json:"true"`
	Predicted  string  `json:"predicted"`
	Confidence float64 `json:"confidence"`
}

// Evaluate summarises predictions on a split; recs names the images.
func Evaluate(p *eval.Predictions, classes []string, recs []vision.Record, split string) *Evaluation {
	c := eval.NewConfusion(classes, p.Labels, p.Pred)
	e := &Evaluation{Split: split, Images: len(p.Labels), Accuracy: p.Accuracy(), Loss: p.Loss,
		Confusion: c, PerClass: c.PerClass(), Breakdown: c.Decompose()}
	for _, m := range p.ConfidentMistakes(10) {
		e.Mistakes = append(e.Mistakes, Mistake{Image: recs[m.Index].ImageName, True: classes[m.Label], Predicted: classes[m.Pred], Confidence: m.Confidence})
	}
	return e
}

// Run is everything a run's report shows.
type Run struct {
	Title string `json:"title"`
	// Identity is the run folder's key (see experiment.Identify): what a
	// finished run is reused for.
	Identity  string        `json:"identity,omitempty"`
	Data      string        `json:"data"`
	Split     string        `json:"split"`
	Seed      uint64        `json:"seed"`
	Device    string        `json:"device"`
	Augment   string        `json:"augment,omitempty"`
	Model     model.Config  `json:"model"`
	Train     train.Config  `json:"train"`
	History   train.History `json:"history"`
	BestEpoch int           `json:"best_epoch"`
	Test      *Evaluation   `json:"test,omitempty"`
	Notes     []string      `json:"notes,omitempty"`
}

// Write saves dir/report.md, dir/metrics.json and the plots.
func Write(dir string, r *Run) error {
	if len(r.History) > 0 {
		if err := HistoryPlots(r.History, dir); err != nil {
			return err
		}
	}
	if r.Test != nil {
		if err := ConfusionHeatmap(r.Test.Confusion, "Confusion matrix ("+r.Test.Split+")", filepath.Join(dir, rundir.ConfusionPlot)); err != nil {
			return err
		}
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := fileio.WriteAtomic(filepath.Join(dir, rundir.Metrics), append(b, '\n')); err != nil {
		return err
	}
	return fileio.WriteAtomic(filepath.Join(dir, rundir.Report), []byte(Markdown(r)))
}

func augmentText(a string) string {
	if a == "" || a == "none" {
		return "none"
	}
	return a
}

func pct(v float64) string { return fmt.Sprintf("%.2f %%", 100*v) }

// Markdown renders the report.
func Markdown(r *Run) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s\n\n", r.Title)
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "> %s\n\n", n)
	}
	fmt.Fprintf(&b, "## Set-up\n\n| | |\n|---|---|\n")
	dropout := r.Model.Dropout
	if r.Model.BatchNorm {
		dropout += ", BatchNorm"
	}
	rows := [][2]string{
		{"data", "`" + r.Data + "`"}, {"split", fmt.Sprintf("%s (seed %d)", r.Split, r.Seed)},
		{"model", fmt.Sprintf("%s (%s), %d classes, input %dx%d", r.Model.Arch, dropout, len(r.Model.Classes), r.Model.Width, r.Model.Height)},
		{"optimizer", fmt.Sprintf("SGD lr %g, momentum %g, weight decay %g, schedule %s", r.Train.LR, r.Train.Momentum, r.Train.WeightDecay, r.Train.Schedule)},
		{"batch size / epochs", fmt.Sprintf("%d / %d", r.Train.BatchSize, r.Train.Epochs)},
		{"augmentation", augmentText(r.Augment)},
		{"seed / device", fmt.Sprintf("%d / %s", r.Train.Seed, r.Device)},
		{"loss", "cross-entropy on logits (the study's softmax before CrossEntropyLoss, a double softmax, is not copied)"},
	}
	for _, row := range rows {
		fmt.Fprintf(&b, "| %s | %s |\n", row[0], row[1])
	}
	if len(r.History) > 0 {
		fmt.Fprintf(&b, "\n## Training\n\n| epoch | lr | train loss | train acc | val loss | val acc | images/s |\n|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, e := range r.History {
			mark := ""
			if e.Epoch == r.BestEpoch {
				mark = " **(best)**"
			}
			fmt.Fprintf(&b, "| %d%s | %.5g | %.4f | %s | %.4f | %s | %.0f |\n", e.Epoch, mark, e.LR, e.TrainLoss, pct(e.TrainAcc), e.ValLoss, pct(e.ValAcc), e.ImagesPerSec)
		}
		fmt.Fprintf(&b, "\n![loss](%s) ![accuracy](%s)\n", rundir.Plot(rundir.LossPlot, ".png"), rundir.Plot(rundir.AccuracyPlot, ".png"))
	}
	if t := r.Test; t != nil {
		writeEvaluation(&b, t, r.BestEpoch)
	}
	return b.String()
}

// EvaluationMarkdown renders one evaluation on its own.
func EvaluationMarkdown(e *Evaluation) string {
	var b strings.Builder
	writeEvaluation(&b, e, 0)
	return strings.Replace(b.String(), confusionLink, "", 1)
}

// confusionLink shows the confusion matrix's plot in a run's report.
var confusionLink = "\n![confusion matrix](" + rundir.Plot(rundir.ConfusionPlot, ".png") + ")\n"

func writeEvaluation(b *strings.Builder, t *Evaluation, bestEpoch int) {
	fmt.Fprintf(b, "\n## %s results\n\n", strings.ToUpper(t.Split[:1])+t.Split[1:])
	if bestEpoch > 0 {
		fmt.Fprintf(b, "Best checkpoint (epoch %d, by validation accuracy) on the %s split: ", bestEpoch, t.Split)
	}
	fmt.Fprintf(b, "**accuracy %s** on %d images, loss %.4f.\n\n", pct(t.Accuracy), t.Images, t.Loss)
	fmt.Fprintf(b, "### Confusion matrix\n\nRows: true class; columns: predicted.\n\n| |")
	for _, c := range t.Confusion.Classes {
		fmt.Fprintf(b, " %s |", abbreviate(c))
	}
	fmt.Fprintf(b, "\n|---|%s\n", strings.Repeat("---:|", len(t.Confusion.Classes)))
	for i, row := range t.Confusion.M {
		fmt.Fprintf(b, "| %s |", t.Confusion.Classes[i])
		for _, v := range row {
			fmt.Fprintf(b, " %d |", v)
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(b, "%s\n### Per class\n\n| class | images | correct | accuracy |\n|---|---:|---:|---:|\n", confusionLink)
	for _, c := range t.PerClass {
		fmt.Fprintf(b, "| %s | %d | %d | %s |\n", c.Class, c.Images, c.Correct, pct(c.Accuracy))
	}
	d := t.Breakdown
	fmt.Fprintf(b, "\n### Errors\n\n%d misclassified images. ", d.Errors)
	if d.Errors > 0 && d.Gender+d.Aspect+d.Side > 0 {
		share := func(n int) string { return fmt.Sprintf("%d (%.0f %%)", n, 100*float64(n)/float64(d.Errors)) }
		fmt.Fprintf(b, "Of those, the gender is wrong in %s, the aspect (dorsal/palmar) in %s, the side (left/right) in %s (one error can count in several).\n", share(d.Gender), share(d.Aspect), share(d.Side))
	} else {
		b.WriteString("\n")
	}
	if len(t.Mistakes) > 0 {
		fmt.Fprintf(b, "\nMost confident mistakes:\n\n| image | true | predicted | confidence |\n|---|---|---|---:|\n")
		for _, m := range t.Mistakes {
			fmt.Fprintf(b, "| %s | %s | %s | %.3f |\n", m.Image, m.True, m.Predicted, m.Confidence)
		}
		if t.MistakeMaps != "" {
			fmt.Fprintf(b, "\nWhere the network looked for the class it wrongly chose, in the most confident mistakes "+
				"(class-activation maps of the last convolutional block over the image as the network saw it):\n\n[![mistakes](%s)](%s)\n", t.MistakeMaps, t.MistakeMaps)
		}
	}
}
