package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/handnet/handnet/eval/report"
	"github.com/handnet/handnet/handnet/experiment"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/rundir"
	"github.com/handnet/handnet/train"
	"github.com/handnet/handnet/vision"
	log "github.com/sirupsen/logrus"
	"github.com/spf13/pflag"
)

func init() {
	register(&command{
		name:  "audit",
		usage: "--data DIR --out DIR [--models cnn,resnet18] [--weights FILE] [--repeats K] [--epochs N] [--protocols random,subject] [--labels class8|gender] [--devices LIST | --jobs N] [--shard I/N]",
		summary: "How much of the study's accuracy is memorised people? Train its headline models (the final CNN; with\n" +
			"--weights, ResNet-18 under freeze fc, layer4 and none) on the study's random split of the images and on\n" +
			"subject-disjoint splits (no person in two parts), K repeats each with a new split and seed, and write\n" +
			"audit.json, audit.md and audit.png/.svg: means with 95 % Student-t intervals, the study's figures beside\n" +
			"them, the leakage gap (random − subject) per factor, and plain findings. Each run is a run folder under\n" +
			"--out, reused when finished; workers sharing --out (--shard, --jobs, --devices) never train the same run\n" +
			"and the last to finish writes the tables.",
		setup: func(fs *pflag.FlagSet) func([]string) error {
			f, w := registerSweep(fs)
			fs.MarkHidden("split") // the audit runs both: --protocols
			models := fs.String("models", "cnn", "comma-separated: cnn (the study's final CNN), resnet18 (three freeze scenarios; needs --weights)")
			w.registerWeights(fs, "torchvision's ResNet-18 ImageNet weights (handnet weights fetch resnet18), for --models resnet18")
			repeats := fs.Int("repeats", 5, "repeats per configuration and protocol, each with a new split and seed (--seed, --seed+1, …)")
			protocols := fs.String("protocols", "random,subject", "comma-separated: random (the study's split of the images), subject (no person in two parts)")
			cnnLR := fs.Float64("cnn-lr", train.DefaultConfig().LR, "learning rate of the CNN (the study's choice)")
			tlr := fs.Float64("transfer-lr", 0.001, "learning rate of the ResNet-18 fine-tuning")
			level := fs.Float64("level", 0.95, "confidence level of the intervals")
			size := fs.String("image-size", fmt.Sprintf("%dx%d", vision.Width, vision.Height), "WxH the images are cached at and the models see (the study's 170x128; smaller for quick synthetic audits)")
			w.registerPlaces(fs)
			return func(args []string) error {
				if err := w.check(args); err != nil {
					return err
				}
				if fs.Changed("split") {
					return usagef("--split: the audit runs both splits; choose them with --protocols random,subject")
				}
				for name, v := range map[string]float64{"cnn-lr": *cnnLR, "transfer-lr": *tlr} {
					if err := checkFloat(name, v, false); err != nil {
						return err
					}
				}
				iw, ih, err := parseSize(*size)
				if err != nil || iw < 40 || ih < 40 || iw > 4000 || ih > 4000 {
					return usagef("--image-size %q: want WxH, each side 40 to 4000 pixels", *size)
				}
				var protos []vision.SplitMethod
				for _, p := range strings.Split(*protocols, ",") {
					m, err := vision.ParseSplitMethod(strings.TrimSpace(p))
					if err != nil {
						return usagef("--protocols: %q: want random, subject or both", p)
					}
					protos = append(protos, m)
				}
				if err := w.checkWeights(); err != nil {
					return err
				}
				configs, err := experiment.HeadlineConfigs(strings.Split(*models, ","), w.weights, *cnnLR, *tlr)
				var fe *experiment.FieldError
				if errors.As(err, &fe) {
					return flagError(err)
				} else if err != nil {
					return usagef("--models: %v", err)
				}
				f.model, f.cfg.LR, f.dropout, f.split = "cnn", *cnnLR, model.FinalDropout, "random"
				base, err := f.spec()
				if err != nil {
					return err
				}
				base.Width, base.Height = iw, ih
				if iw == vision.Width && ih == vision.Height {
					base.Width, base.Height = 0, 0 // the default size: the same identities as train's and reproduce's
				}
				a := &experiment.Audit{Base: base, Out: w.out, Configs: configs, Protocols: protos, Repeats: *repeats, Level: *level, Logf: log.Infof, Hooks: hooks}
				if err := a.Validate(); err != nil {
					return flagError(err)
				}
				sw, err := w.start(f)
				if err != nil {
					return err
				}
				a.Shard, a.Shards, a.Slots = sw.shard, sw.shards, sw.slots
				start := time.Now()
				var res *report.Audit
				if ok, err := sw.run("the audit's runs", rundir.AuditMarkdown, func(ctx context.Context) (err error) { res, err = a.Run(ctx); return err }); !ok {
					return err
				}
				printAudit(res)
				dir := rundir.Folder{Dir: w.out}
				fmt.Printf("tables: %s, %s, %s.png (%.1f min)\n", dir.Path(rundir.AuditMarkdown), dir.Path(rundir.AuditJSON),
					filepath.Join(w.out, rundir.AuditPlot), time.Since(start).Minutes())
				return nil
			}
		},
	})
}

// printAudit prints the summaries and gaps, one line each.
func printAudit(a *report.Audit) {
	for _, s := range a.Summaries {
		hw := "n/a"
		if s.Test.N > 1 {
			hw = fmt.Sprintf("±%.2f", 100*s.Test.HalfWidth())
		}
		factors := ""
		if a.Labels == "class8" {
			factors = fmt.Sprintf("  (gender %.2f %%, aspect %.2f %%, side %.2f %%)", 100*s.Gender.Mean, 100*s.Aspect.Mean, 100*s.Side.Mean)
		}
		fmt.Printf("%-26s %-8s n=%d  test %6.2f %% %s%s  published %s\n", s.Title, s.Protocol, s.Test.N, 100*s.Test.Mean, hw, factors, s.Published)
	}
	for _, g := range a.Gaps {
		factors := ""
		if a.Labels == "class8" {
			factors = fmt.Sprintf("  (gender %+.2f, aspect %+.2f, side %+.2f)", 100*g.Gender.Mean, 100*g.Aspect.Mean, 100*g.Side.Mean)
		}
		fmt.Printf("gap %-22s random − subject %+.2f points [%+.2f, %+.2f]%s\n", g.Title, 100*g.Test.Mean, 100*g.Test.Low, 100*g.Test.High, factors)
	}
}
