package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/handnet/handnet/eval/report"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/experiment"
	"github.com/handnet/handnet/handnet/torch"
	"github.com/handnet/handnet/train"
	"github.com/handnet/handnet/vision"
	log "github.com/sirupsen/logrus"
	"github.com/spf13/pflag"
)

// StudyLRs are the four learning rates of the study's Part 1 comparison.
var studyLRs = []float64{0.01, 0.005, 0.0025, 0.001}

// The dropout placement of the learning-rate experiments (the study's
// first experiment).
const lrSweepDropout = "fc1-0.4"

func init() {
	register(&command{
		name:  "reproduce",
		usage: "--data DIR --out DIR [--epochs N] [--split METHOD] [--seed S] [--device DEV] [--weights FILE]",
		summary: "Run the study's Part 1: the CNN at 4 learning rates, then its 4 dropout placements at the best one,\n" +
			"choose the final model by validation accuracy and report its test accuracy and confusion matrix.\n" +
			"With --weights, also Part 2: ResNet-18 fine-tuned with freeze fc, layer4 and none, compared with Part 1.\n" +
			"Each experiment is a run folder under --out; finished ones are reused when the command is run again.",
		setup: func(fs *pflag.FlagSet) func([]string) error {
			var f specFlags
			f.register(fs, false)
			out := fs.String("out", "", "output folder (required)")
			w := fs.String("weights", "", "torchvision's ResNet-18 ImageNet weights (handnet weights fetch resnet18): adds Part 2, the three freeze scenarios")
			tlr := fs.Float64("transfer-lr", 0.001, "learning rate of the Part 2 fine-tuning")
			return func(args []string) error {
				if len(args) > 0 {
					return usagef("unexpected arguments %q", args)
				}
				if *out == "" {
					return usagef("--out is required")
				}
				f.model, f.cfg.LR, f.dropout = "cnn", train.DefaultConfig().LR, model.FinalDropout
				base, err := f.spec()
				if err != nil {
					return err
				}
				th := torch.NewThread(f.threads)
				defer th.Close()
				ctx, stop := interruptible()
				defer stop()
				if *w != "" {
					if _, err := os.Stat(*w); err != nil {
						return fmt.Errorf("--weights: %w (fetch them with: handnet weights fetch resnet18)", err)
					}
				}
				return reproduce(ctx, th, base, *out, *w, *tlr)
			}
		},
	})
}

// experimentResult is one finished experiment of the matrix.
type experimentResult struct {
	Name    string        `json:"name"`
	Dir     string        `json:"dir"`
	LR      float64       `json:"lr"`
	Dropout string        `json:"dropout"`
	History train.History `json:"history"`
	BestVal float64       `json:"best_val_acc"`
	Test    float64       `json:"test_acc"`
	run     *report.Run
}

// runOrReuse runs one experiment, or reads it back when its folder holds a
// finished run of the same spec.
func runOrReuse(ctx context.Context, th *torch.Thread, s experiment.Spec, dir, prefix string) (*experimentResult, error) {
	res := &experimentResult{Name: filepath.Base(dir), Dir: dir, LR: s.Train.LR, Dropout: s.Model.Dropout}
	if b, err := os.ReadFile(filepath.Join(dir, "metrics.json")); err == nil {
		var r report.Run
		if json.Unmarshal(b, &r) == nil && len(r.History) == s.Train.Epochs && r.Test != nil && r.Train == s.Train && r.Model.Dropout == s.Model.Dropout {
			log.Infof("%s: finished earlier, reusing %s", prefix, dir)
			res.run = &r
		}
	}
	if res.run == nil {
		resume := false
		if _, err := os.Stat(filepath.Join(dir, train.LastCheckpoint)); err == nil {
			resume = true
			log.Infof("%s: continuing the interrupted run in %s", prefix, dir)
		}
		r, err := experiment.Run(ctx, th, s, dir, resume, hooks(prefix+" "))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", prefix, err)
		}
		res.run = r
	}
	res.History = res.run.History
	for _, e := range res.History {
		res.BestVal = max(res.BestVal, e.ValAcc)
	}
	if res.run.Test != nil {
		res.Test = res.run.Test.Accuracy
	}
	return res, nil
}

func reproduce(ctx context.Context, th *torch.Thread, base experiment.Spec, out, weightsFile string, transferLR float64) error {
	start := time.Now()
	var lrRuns, dropRuns []*experimentResult
	for i, lr := range studyLRs {
		s := base
		s.Train.LR, s.Model.Dropout = lr, lrSweepDropout
		s.Title = fmt.Sprintf("Part 1, learning rate %g (dropout %s)", lr, lrSweepDropout)
		r, err := runOrReuse(ctx, th, s, filepath.Join(out, fmt.Sprintf("lr-%g", lr)), fmt.Sprintf("[lr %d/%d]", i+1, len(studyLRs)))
		if err != nil {
			return err
		}
		lrRuns = append(lrRuns, r)
	}
	best := bestByVal(lrRuns)
	log.Infof("best learning rate by validation accuracy: %g (%.4f)", best.LR, best.BestVal)
	for i, d := range model.StudyDropouts {
		if d == lrSweepDropout {
			dropRuns = append(dropRuns, best)
			continue
		}
		s := base
		s.Train.LR, s.Model.Dropout = best.LR, d
		s.Title = fmt.Sprintf("Part 1, dropout %s (learning rate %g)", d, best.LR)
		r, err := runOrReuse(ctx, th, s, filepath.Join(out, fmt.Sprintf("dropout-%s-lr-%g", d, best.LR)), fmt.Sprintf("[dropout %d/%d]", i+1, len(model.StudyDropouts)))
		if err != nil {
			return err
		}
		dropRuns = append(dropRuns, r)
	}
	final := bestByVal(dropRuns)
	var transfer []*experimentResult
	if weightsFile != "" {
		for i, fr := range []string{model.FreezeFC, model.FreezeLayer4, model.FreezeNone} {
			s := base
			s.Train.LR, s.Weights = transferLR, weightsFile
			s.Model = model.Config{Arch: "resnet18", Freeze: fr, FreezeBN: fr == model.FreezeFC}
			s.Title = fmt.Sprintf("Part 2, ResNet-18 transfer learning, freeze %s", fr)
			r, err := runOrReuse(ctx, th, s, filepath.Join(out, "resnet18-freeze-"+fr), fmt.Sprintf("[resnet18 %d/3]", i+1))
			if err != nil {
				return err
			}
			r.Dropout = "ResNet-18, freeze " + fr
			transfer = append(transfer, r)
		}
	}
	if err := writeStudyReport(out, base, lrRuns, dropRuns, best, final, transfer); err != nil {
		return err
	}
	fmt.Printf("final model: dropout %s, lr %g: test accuracy %.2f %%\nreport: %s (%.1f min)\n",
		final.Dropout, final.LR, 100*final.Test, filepath.Join(out, "report.md"), time.Since(start).Minutes())
	return nil
}

// bestByVal picks the run with the best validation accuracy (the first on ties).
func bestByVal(runs []*experimentResult) *experimentResult {
	best := runs[0]
	for _, r := range runs {
		if r.BestVal > best.BestVal {
			best = r
		}
	}
	return best
}

func writeStudyReport(out string, base experiment.Spec, lrRuns, dropRuns []*experimentResult, best, final *experimentResult, transfer []*experimentResult) error {
	sweep := func(runs []*experimentResult, label func(*experimentResult) string, file string) error {
		var series []report.Series
		for _, r := range runs {
			var y []float64
			for _, e := range r.History {
				y = append(y, e.ValAcc)
			}
			series = append(series, report.Series{Name: label(r), Y: y})
		}
		return report.Curves("Validation accuracy", "accuracy", series, filepath.Join(out, file))
	}
	if err := sweep(lrRuns, func(r *experimentResult) string { return fmt.Sprintf("lr %g", r.LR) }, "sweep-lr"); err != nil {
		return err
	}
	if err := sweep(dropRuns, func(r *experimentResult) string { return r.Dropout }, "sweep-dropout"); err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Part 1 of the study, reproduced\n\nData `%s`, %s split (seed %d), %d epochs, batch %d, SGD momentum %g; cross-entropy on logits.\n"+
		"Selection by validation accuracy (best epoch); each row links to its run's full report.\n\n", base.Data, base.Split, base.Train.Seed, base.Train.Epochs, base.Train.BatchSize, base.Train.Momentum)
	table := func(title string, runs []*experimentResult, key func(*experimentResult) string) {
		fmt.Fprintf(&b, "## %s\n\n| experiment | final train acc | final val acc | best val acc | |\n|---|---:|---:|---:|---|\n", title)
		for _, r := range runs {
			last := r.History[len(r.History)-1]
			mark := ""
			if r == best && title[:1] == "L" || r == final && title[:1] == "D" {
				mark = " **(chosen)**"
			}
			rel, _ := filepath.Rel(out, filepath.Join(r.Dir, "report.md"))
			fmt.Fprintf(&b, "| %s%s | %.2f %% | %.2f %% | %.2f %% | [report](%s) |\n", key(r), mark, 100*last.TrainAcc, 100*last.ValAcc, 100*r.BestVal, rel)
		}
		b.WriteString("\n")
	}
	table("Learning rates (dropout "+lrSweepDropout+")", lrRuns, func(r *experimentResult) string { return fmt.Sprintf("lr %g", r.LR) })
	b.WriteString("![validation accuracy by learning rate](sweep-lr.png)\n\n")
	table(fmt.Sprintf("Dropout placements (lr %g)", best.LR), dropRuns, func(r *experimentResult) string { return r.Dropout })
	b.WriteString("![validation accuracy by dropout placement](sweep-dropout.png)\n\n")
	fmt.Fprintf(&b, "## Final model\n\nDropout %s at learning rate %g: **test accuracy %.2f %%**.\n", final.Dropout, final.LR, 100*final.Test)
	if t := final.run.Test; t != nil {
		body := report.EvaluationMarkdown(t)
		if i := strings.Index(body, "### Confusion matrix"); i >= 0 {
			body = body[i:]
		}
		b.WriteString("\n" + body + "\n")
	}
	if len(transfer) > 0 {
		fmt.Fprintf(&b, "\n## Part 2: ResNet-18 transfer learning\n\nStarting from %s, learning rate %g.\n\n", filepath.Base(transfer[0].run.Model.Pretrained), transfer[0].LR)
		b.WriteString("| model | final train acc | best val acc | test acc | |\n|---|---:|---:|---:|---|\n")
		rel, _ := filepath.Rel(out, filepath.Join(final.Dir, "report.md"))
		last := final.History[len(final.History)-1]
		fmt.Fprintf(&b, "| Part 1: CNN, dropout %s | %.2f %% | %.2f %% | %.2f %% | [report](%s) |\n", final.Dropout, 100*last.TrainAcc, 100*final.BestVal, 100*final.Test, rel)
		for _, r := range transfer {
			rel, _ := filepath.Rel(out, filepath.Join(r.Dir, "report.md"))
			last := r.History[len(r.History)-1]
			fmt.Fprintf(&b, "| Part 2: %s | %.2f %% | %.2f %% | %.2f %% | [report](%s) |\n", r.Dropout, 100*last.TrainAcc, 100*r.BestVal, 100*r.Test, rel)
		}
	}
	res := map[string]any{"lr_runs": lrRuns, "dropout_runs": dropRuns, "best_lr": best.LR, "final": final.Name, "final_test_acc": final.Test, "transfer_runs": transfer}
	js, _ := json.MarshalIndent(res, "", "  ")
	if err := vision.WriteFileAtomic(filepath.Join(out, "metrics.json"), append(js, '\n')); err != nil {
		return err
	}
	return vision.WriteFileAtomic(filepath.Join(out, "report.md"), []byte(b.String()))
}
