package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/handnet/handnet/eval/report"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/experiment"
	"github.com/handnet/handnet/handnet/torch"
	"github.com/handnet/handnet/train"
	"github.com/handnet/handnet/vision"
	"github.com/schollz/progressbar/v3"
	log "github.com/sirupsen/logrus"
	"github.com/spf13/pflag"
)

// specFlags are the flags that describe an experiment, shared by train,
// reproduce and demo.
type specFlags struct {
	cache    cacheFlags
	model    string
	weights  string
	freeze   string
	freezeBN string
	dropout  string
	bn       bool
	split    string
	scheme   string
	augment  string
	device   string
	threads  int
	cfg      train.Config
	schedule string
}

func (f *specFlags) register(fs *pflag.FlagSet, withModel bool) {
	d := train.DefaultConfig()
	f.cache.register(fs)
	if withModel {
		fs.StringVar(&f.model, "model", "cnn", "architecture: cnn (the study's seed CNN) or resnet18")
		fs.StringVar(&f.weights, "weights", "", "resnet18: published ImageNet weights to fine-tune (handnet weights fetch resnet18); none: train from scratch")
		fs.StringVar(&f.freeze, "freeze", "none", "resnet18: fc (only the new head trains), layer4 (layer4 and the head) or none (everything)")
		fs.StringVar(&f.freezeBN, "freeze-bn", "auto", "resnet18: frozen BatchNorm layers keep their running statistics: true, false, or auto (true for --freeze fc)")
		fs.StringVar(&f.dropout, "dropout", model.FinalDropout, "CNN dropout placement: fc1-0.4, flat0.4-fc1-0.4 (the study's final), fc1-0.5, conv0.2-fc1-0.5, none")
		fs.BoolVar(&f.bn, "batch-norm", false, "add BatchNorm after each convolution (the study's improvement idea)")
		fs.Float64Var(&f.cfg.LR, "lr", d.LR, "learning rate")
	}
	fs.IntVar(&f.cfg.Epochs, "epochs", d.Epochs, "epochs")
	fs.IntVar(&f.cfg.BatchSize, "batch-size", d.BatchSize, "batch size")
	fs.Float64Var(&f.cfg.Momentum, "momentum", d.Momentum, "SGD momentum")
	fs.Float64Var(&f.cfg.WeightDecay, "weight-decay", d.WeightDecay, "SGD weight decay (L2)")
	fs.StringVar(&f.cfg.Schedule, "schedule", d.Schedule, "learning-rate schedule: none, step or cosine")
	fs.IntVar(&f.cfg.StepSize, "step-size", d.StepSize, "epochs between decays of the step schedule")
	fs.Float64Var(&f.cfg.Gamma, "gamma", d.Gamma, "decay factor of the step schedule")
	fs.Uint64Var(&f.cfg.Seed, "seed", d.Seed, "seed for the split, initialisation, shuffling, dropout and augmentation")
	fs.IntVar(&f.cfg.CheckpointEvery, "checkpoint-every", 200, "also save the last checkpoint every N batches (0: at epoch ends only)")
	fs.StringVar(&f.split, "split", "random", "split: random (the study's), stratified, or subject (no person in two splits)")
	fs.StringVar(&f.scheme, "labels", "class8", "label scheme: class8 (gender x aspect), gender or aspect")
	fs.StringVar(&f.augment, "augment", "none", "training augmentation: none, default, or key=value list (rotate, translate, scale, brightness, contrast, saturation, hflip)")
	fs.StringVar(&f.device, "device", "auto", "device: auto, cpu, cuda or cuda:N")
	fs.IntVar(&f.threads, "threads", 0, "CPU threads for torch (0: all usable CPUs)")
}

func (f *specFlags) spec() (experiment.Spec, error) {
	s := experiment.Spec{Data: f.cache.data, CacheDir: f.cache.dir, SkipBad: f.cache.skipBad, Exact: f.cache.exact,
		Split: f.split, Scheme: f.scheme, Augment: f.augment, Device: f.device, Train: f.cfg,
		Model: model.Config{Arch: f.model, Dropout: f.dropout, BatchNorm: f.bn}, Weights: f.weights}
	if s.Data == "" {
		return s, usagef("--data is required")
	}
	if err := s.Train.Validate(); err != nil {
		return s, usagef("%v", err)
	}
	if _, err := vision.ParseAugment(f.augment); err != nil {
		return s, usagef("--augment: %v", err)
	}
	if _, err := vision.ParseSplitMethod(f.split); err != nil {
		return s, usagef("--split: %v", err)
	}
	if _, err := vision.ParseScheme(f.scheme); err != nil {
		return s, usagef("--labels: %v", err)
	}
	switch f.model {
	case "cnn":
		if _, err := model.ParseDropout(f.dropout); err != nil {
			return s, usagef("--dropout: %v", err)
		}
		if f.weights != "" {
			return s, usagef("--weights is for --model resnet18")
		}
		s.Model.Dropout = f.dropout
	case "resnet18":
		switch f.freeze {
		case model.FreezeFC, model.FreezeLayer4, model.FreezeNone:
		default:
			return s, usagef("--freeze %q: want fc, layer4 or none", f.freeze)
		}
		s.Model.Dropout, s.Model.BatchNorm, s.Model.Freeze = "", false, f.freeze
		switch f.freezeBN {
		case "auto":
			s.Model.FreezeBN = f.freeze == model.FreezeFC
		case "true", "false":
			s.Model.FreezeBN = f.freezeBN == "true"
		default:
			return s, usagef("--freeze-bn %q: want true, false or auto", f.freezeBN)
		}
		if f.weights != "" {
			if _, err := os.Stat(f.weights); err != nil {
				return s, fmt.Errorf("--weights: %w (fetch them with: handnet weights fetch resnet18)", err)
			}
		}
	default:
		return s, usagef("--model %q: want cnn or resnet18", f.model)
	}
	return s, nil
}

// interruptible returns a context cancelled by Ctrl-C / SIGTERM: training
// finishes its batch, saves the last checkpoint and stops.
func interruptible() (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	go func() {
		select {
		case <-ch:
			log.Warn("interrupted: saving the last checkpoint (Ctrl-C again to quit at once)")
			cancel()
			signal.Stop(ch)
		case <-ctx.Done():
		}
	}()
	return ctx, func() { signal.Stop(ch); cancel() }
}

// hooks draws a progress bar per epoch with live loss, accuracy and rate,
// and logs each epoch's figures.
func hooks(prefix string) experiment.Hooks {
	var (
		mu  sync.Mutex
		bar *progressbar.ProgressBar
		cb  *progressbar.ProgressBar
	)
	return experiment.Hooks{
		Logf: log.Infof,
		Cache: func(done, total int) {
			mu.Lock()
			defer mu.Unlock()
			if cb == nil {
				cb = newBar(total, "decoding", "images")
			}
			cb.Set(done)
		},
		OnBatch: func(p train.Progress) {
			if bar == nil || p.Batch == 1 {
				bar = newBar(p.Batches, fmt.Sprintf("%sepoch %d/%d", prefix, p.Epoch, p.Epochs), "batches")
			}
			bar.Describe(fmt.Sprintf("%sepoch %d/%d loss %.4f acc %.3f %.0f img/s", prefix, p.Epoch, p.Epochs, p.Loss, p.Acc, p.ImagesPerSecond))
			bar.Set(p.Batch)
		},
		OnEpoch: func(e train.EpochStats) {
			if bar != nil {
				bar.Finish()
				bar = nil
			}
			log.Infof("%sepoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1fs, %.0f img/s",
				prefix, e.Epoch, e.TrainLoss, e.TrainAcc, e.ValLoss, e.ValAcc, e.Seconds, e.ImagesPerSec)
		},
	}
}

func init() {
	register(&command{
		name:  "train",
		usage: "--data DIR --out RUN [--model cnn] [--dropout NAME] [--lr LR] [--epochs N] [--batch-size N] [--split METHOD] [--seed S] [--device DEV] [--resume]",
		summary: "Train a model and evaluate its best checkpoint on the test split.\n" +
			"RUN receives checkpoints (best/last .safetensors), history.csv/.json, report.md, metrics.json and plots.\n" +
			"Ctrl-C saves the last checkpoint; --resume continues from it.",
		setup: func(fs *pflag.FlagSet) func([]string) error {
			var f specFlags
			f.register(fs, true)
			out := fs.String("out", "", "run folder (required)")
			resume := fs.Bool("resume", false, "continue the run in --out from its last checkpoint")
			return func(args []string) error {
				if len(args) > 0 {
					return usagef("unexpected arguments %q", args)
				}
				if *out == "" {
					return usagef("--out is required")
				}
				s, err := f.spec()
				if err != nil {
					return err
				}
				s.Title = "handnet train: " + filepath.Base(*out)
				th := torch.NewThread(f.threads)
				defer th.Close()
				ctx, stop := interruptible()
				defer stop()
				r, err := experiment.Run(ctx, th, s, *out, *resume, hooks(""))
				if errors.Is(err, train.ErrInterrupted) {
					return fmt.Errorf("%v\nthe last checkpoint is in %s; continue with the same command plus --resume", err, *out)
				}
				if err != nil {
					return err
				}
				printResult(r, *out)
				return nil
			}
		},
	})
	register(&command{
		name:    "eval",
		usage:   "--run RUN [--split test] [--checkpoint best|last] [--json]",
		summary: "Evaluate a trained run's checkpoint on a split: accuracy, confusion matrix, per-class accuracy, error decomposition.",
		setup: func(fs *pflag.FlagSet) func([]string) error {
			run := fs.String("run", "", "run folder made by handnet train (required)")
			split := fs.String("split", "test", "split: train, val or test")
			ckpt := fs.String("checkpoint", "best", "checkpoint: best or last")
			device := fs.String("device", "", "device (default: the run's)")
			threads := fs.Int("threads", 0, "CPU threads for torch (0: all usable CPUs)")
			asJSON := fs.Bool("json", false, "print JSON")
			return func(args []string) error {
				if len(args) > 0 {
					return usagef("unexpected arguments %q", args)
				}
				if *run == "" {
					return usagef("--run is required")
				}
				if *ckpt != "best" && *ckpt != "last" {
					return usagef("--checkpoint: want best or last")
				}
				th := torch.NewThread(*threads)
				defer th.Close()
				ev, err := experiment.Evaluate(th, *run, *ckpt, *split, *device, hooks(""))
				if err != nil {
					return err
				}
				if *asJSON {
					enc := json.NewEncoder(os.Stdout)
					enc.SetIndent("", "  ")
					return enc.Encode(ev)
				}
				fmt.Print(report.EvaluationMarkdown(ev))
				return nil
			}
		},
	})
}

func printResult(r *report.Run, dir string) {
	if r.Test != nil {
		fmt.Printf("test accuracy %.2f %% (%d images, best epoch %d)\n", 100*r.Test.Accuracy, r.Test.Images, r.BestEpoch)
	}
	fmt.Printf("report: %s\n", filepath.Join(dir, "report.md"))
}
