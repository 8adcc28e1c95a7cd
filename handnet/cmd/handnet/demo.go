package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/handnet/handnet/handnet/experiment"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/rundir"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/handnet/handnet/train"
	"github.com/handnet/handnet/vision"
	log "github.com/sirupsen/logrus"
	"github.com/spf13/pflag"
)

func init() {
	register(&command{
		name:  "demo",
		usage: "[--out runs/demo] [--count N] [--epochs N] [--device DEV]",
		summary: "End to end on synthetic hands: generate a small dataset, train the study's CNN, evaluate it,\n" +
			"and leave the report and plots in --out (a few minutes on 2 CPU cores).",
		setup: func(fs *pflag.FlagSet) func([]string) error {
			out := fs.String("out", filepath.Join("runs", "demo"), "output folder: data/ (kept between demos) and run/ (redone)")
			count := fs.Int("count", 960, "synthetic images")
			epochs := fs.Int("epochs", 10, "epochs")
			device := fs.String("device", "auto", "device: auto, cpu, cuda or cuda:N")
			threads := fs.Int("threads", 0, "CPU threads for torch (0: all usable CPUs)")
			return func(args []string) error {
				if len(args) > 0 {
					return usagef("unexpected arguments %q", args)
				}
				if *count < 100 || *epochs < 1 {
					return usagef("--count must be at least 100 and --epochs at least 1")
				}
				return demo(*out, *count, *epochs, *device, *threads)
			}
		},
	})
}

func demo(out string, count, epochs int, device string, threads int) error {
	start := time.Now()
	data := filepath.Join(out, "data")
	if ds, err := vision.Open(data); err != nil || len(ds.Records) != count {
		log.Infof("drawing %d synthetic hands into %s", count, data)
		bar := newBar(count, "drawing hands", "images")
		var mu sync.Mutex
		if err := vision.GenerateFake(data, vision.FakeOptions{Count: count, Seed: 1, Width: 800, Height: 600, PerSubject: 40,
			Progress: func(int) { mu.Lock(); bar.Add(1); mu.Unlock() }}); err != nil {
			return err
		}
	}
	// A demo is redone from scratch: its run folder is handnet's own.
	run := filepath.Join(out, "run")
	if err := os.RemoveAll(run); err != nil {
		return err
	}
	cfg := train.DefaultConfig()
	cfg.Epochs, cfg.LR, cfg.BatchSize, cfg.CheckpointEvery = epochs, 0.005, 8, 0
	s := experiment.Spec{Data: data, CacheDir: filepath.Join(out, "cache"), Split: "stratified", Scheme: "class8", Device: device,
		Model: model.Config{Arch: "cnn", Dropout: model.FinalDropout}, Train: cfg,
		Title: "handnet demo: the study's CNN on synthetic hands"}
	th := torch.NewThread(threads)
	defer th.Close()
	ctx, stop := interruptible()
	defer stop()
	r, err := experiment.Run(ctx, th, s, run, experiment.Options{Hooks: hooks("")})
	if err != nil {
		return err
	}
	if err := dropResumeState(run); err != nil {
		return err
	}
	fmt.Printf("\ndemo done in %.1f min: test accuracy %.2f %% on %d synthetic images (chance 12.5 %%)\n", time.Since(start).Minutes(), 100*r.Test.Accuracy, r.Test.Images)
	f := rundir.Folder{Dir: run}
	fmt.Printf("report:  %s\nplots:   %s, %s, %s\n", f.Path(rundir.Report),
		f.Path(rundir.Plot(rundir.LossPlot, ".png")), f.Path(rundir.Plot(rundir.AccuracyPlot, ".png")), f.Path(rundir.Plot(rundir.ConfusionPlot, ".png")))
	return nil
}

// dropResumeState removes a finished demo's last and epoch checkpoints:
// the weights with the optimizer's momentum, twice the size of the best
// checkpoint, kept to resume a run — and a demo is redone from scratch.
// What a user opens stays: best.safetensors (predict, serve), the report,
// metrics and plots. The run folder goes from about 41 MB to 15 MB.
func dropResumeState(run string) error {
	var freed int64
	f := rundir.Folder{Dir: run}
	for _, name := range []string{rundir.LastCheckpoint, rundir.EpochCheckpoint} {
		p := f.Path(name)
		fi, err := os.Stat(p)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return err
		}
		if err := os.Remove(p); err != nil {
			return err
		}
		if name == rundir.LastCheckpoint { // epoch is a hard link to it
			freed += fi.Size()
		}
	}
	log.Infof("dropped the resume state (%s, %s: %.0f MB; a demo is redone from scratch); %s is what predict and serve take",
		rundir.LastCheckpoint, rundir.EpochCheckpoint, float64(freed)/1e6, f.Path(rundir.BestCheckpoint))
	return nil
}
