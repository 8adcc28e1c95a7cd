package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/handnet/handnet/handnet/bench"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/torch"
	log "github.com/sirupsen/logrus"
	"github.com/spf13/pflag"
	"github.com/sugarme/gotch"
)

// Default modes per device: what `handnet bench` measures without --modes.
var (
	cpuModes  = "fp32,fp32+loader,fp32+data,fp32+cl,bf16,bf16+cl"
	cudaModes = "fp32,fp32+loader,fp32+data,fp32+cl,bf16+cl,bf16+cl+data,fp16+cl"
)

func init() {
	register(&command{
		name:  "bench",
		usage: "[--models cnn,resnet18] [--batch 16] [--modes LIST] [--phases train,infer] [--device D] [--pytorch] [--json]",
		summary: "Images per second of training and inference steps, per model × batch size × mode (precision, +cl\n" +
			"channels last, +loader handnet's CPU loader, +data the cache on the device). With --pytorch, runs the\n" +
			"same steps in PyTorch in the same call and prints the ratio handnet / PyTorch per row.",
		setup: func(fs *pflag.FlagSet) func([]string) error {
			models := fs.String("models", "cnn,resnet18", "models, comma-separated: cnn (the study's), resnet18")
			batches := fs.String("batch", "", "batch sizes, comma-separated (default: 1,16 on the CPU, 16,256 on CUDA)")
			modes := fs.String("modes", "", "modes, comma-separated: fp32|bf16|fp16, then +cl, +loader or +data (default: "+cpuModes+" on the CPU; "+cudaModes+" on CUDA)")
			phases := fs.String("phases", "train,infer,predict", "phases: train (forward, loss, backward, SGD step), infer (the inference form's forward pass), predict (end to end: JPEG files → decode → forward → answers, as handnet predict; fp32 modes only)")
			device := fs.String("device", "auto", "device: auto, cpu, cuda or cuda:N")
			threads := fs.Int("threads", 0, "CPU threads for torch, both sides (0: all usable CPUs)")
			warmup := fs.Int("warmup", 5, "steps before timing")
			steps := fs.Int("steps", 10, "timed steps at least")
			minTime := fs.Duration("min-time", 2*time.Second, "timed for at least this long")
			rounds := fs.Int("rounds", 1, "measure each row this many times (with --pytorch: handnet, then PyTorch, alternately) and keep each side's best: a shared machine's load only ever slows a measurement down")
			withPy := fs.Bool("pytorch", false, "also run PyTorch's reference of the same steps (handnet/bench/pytorch_bench.py) and print ratios")
			python := fs.String("python", "", "python3 with torch for --pytorch (default: $HANDNET_PYTHON, python3, /usr/bin/python3)")
			asJSON := fs.Bool("json", false, "print one JSON object per row instead of a table")
			return func(args []string) error {
				if len(args) > 0 {
					return usagef("unexpected arguments %q", args)
				}
				dev, err := torch.ParseDevice(*device)
				if err != nil {
					return usagef("--device: %v", err)
				}
				if *warmup < 0 || *steps <= 0 || *minTime < 0 {
					return usagef("--warmup %d, --steps %d, --min-time %v: want ≥ 0, > 0, ≥ 0", *warmup, *steps, *minTime)
				}
				if *rounds < 1 || *rounds > 100 {
					return usagef("--rounds %d: want 1 to 100", *rounds)
				}
				if *batches == "" {
					*batches = "1,16"
					if dev.IsCuda() {
						*batches = "16,256"
					}
				}
				if *modes == "" {
					*modes = cpuModes
					if dev.IsCuda() {
						*modes = cudaModes
					}
				}
				cases, err := benchCases(*models, *batches, *modes, *phases, dev)
				if err != nil {
					return err
				}
				for _, c := range cases { // all before the first: not after minutes of others
					if err := bench.CheckMemory(c, dev); err != nil {
						return fmt.Errorf("%s: %w", c, err)
					}
				}
				o := bench.Options{Device: dev, Warmup: max(*warmup, 1), Steps: *steps, MinTime: max(*minTime, time.Nanosecond), Threads: *threads}
				for _, c := range cases {
					if c.Phase == "predict" && o.Photos == "" {
						tmp, err := os.MkdirTemp("", "handnet-bench")
						if err != nil {
							return err
						}
						defer os.RemoveAll(tmp)
						log.Infof("writing 32 synthetic 1600x1200 photos for the predict rows")
						if o.Photos, err = bench.Photos(tmp, 32); err != nil {
							return err
						}
					}
				}
				var py string
				var pyErr error
				if *withPy {
					needVision := strings.Contains(*models, "resnet18") || strings.Contains(*phases, "predict")
					if py, pyErr = bench.FindPython(*python, needVision); pyErr != nil {
						if *python != "" {
							return pyErr // named explicitly: its failure is an error
						}
						log.Warnf("--pytorch skipped: %v", pyErr)
					}
				}
				th := torch.NewThread(*threads)
				defer th.Close()
				ctx, stop := interruptible()
				defer stop()
				var pt *bench.PyTorch
				if py != "" {
					if pt, err = bench.StartPyTorch(ctx, py, o, th.Threads()); err != nil {
						return err
					}
					defer pt.Close()
				}
				// Row by row, each side measured right after the other, so
				// that both see the same load.
				rows := make([]bench.Row, len(cases))
				for i, c := range cases {
					measure := func(r int) (row bench.Row, err error) {
						if ctx.Err() != nil {
							return row, ctx.Err()
						}
						round := ""
						if *rounds > 1 {
							round = fmt.Sprintf(" (round %d/%d)", r+1, *rounds)
						}
						log.Infof("handnet %d/%d: %s%s", i+1, len(cases), c, round)
						if err := th.Do(func() (err error) { row, err = bench.Measure(c, o); return err }); err != nil {
							return row, fmt.Errorf("%s: %w", c, err)
						}
						return row, nil
					}
					if rows[i], err = bench.Rounds(c, *rounds, measure, pt, log.Infof); err != nil {
						return err
					}
					if pt == nil {
						rows[i].PyTorchNote = "not run (--pytorch)"
						if pyErr != nil {
							rows[i].PyTorchNote = pyErr.Error()
						}
					}
				}
				if pt != nil {
					if err := pt.Close(); err != nil {
						return fmt.Errorf("PyTorch benchmark: %w", err)
					}
				}
				if *asJSON {
					enc := json.NewEncoder(os.Stdout)
					for _, r := range rows {
						if err := enc.Encode(r); err != nil {
							return err
						}
					}
					return nil
				}
				printBenchTable(rows, th.Threads(), *rounds)
				return nil
			}
		},
	})
}

// benchCases expands the flag lists into cases, checking every value.
func benchCases(models, batches, modes, phases string, device gotch.Device) ([]bench.Case, error) {
	split := func(s string) []string {
		var out []string
		for _, x := range strings.Split(s, ",") {
			if x = strings.TrimSpace(x); x != "" {
				out = append(out, x)
			}
		}
		return out
	}
	var bs []int
	for _, b := range split(batches) {
		n, err := strconv.Atoi(b)
		if err != nil || n <= 0 || n > 4096 {
			return nil, usagef("--batch %q: want positive integers up to 4096", b)
		}
		bs = append(bs, n)
	}
	var ms []bench.Mode
	for _, m := range split(modes) {
		mode, err := bench.ParseMode(m)
		if err != nil {
			return nil, usagef("--modes: %v", err)
		}
		if err := mode.Precision.Check(device); err != nil {
			return nil, usagef("--modes %s: %v", m, err)
		}
		ms = append(ms, mode)
	}
	var cases []bench.Case
	for _, name := range split(models) {
		if name != "cnn" && name != "resnet18" {
			return nil, usagef("--models %q: want cnn and/or resnet18", name)
		}
		for _, b := range bs {
			for _, p := range split(phases) {
				if p != "train" && p != "infer" && p != "predict" {
					return nil, usagef("--phases %q: want train, infer and/or predict", p)
				}
				for _, m := range ms {
					if p == "predict" && (m.Precision != model.FP32 || m.ChannelsLast || m.Data != "" || m.Eager) {
						continue // the classifier runs its own form: one predict row per model and batch
					}
					if p == "train" && m.Eager {
						continue // +eager is an inference path; training has one path
					}
					cases = append(cases, bench.Case{Model: name, Batch: b, Mode: m, Phase: p})
				}
			}
		}
	}
	if len(cases) == 0 {
		return nil, errors.New("nothing to measure")
	}
	return cases, nil
}

func printBenchTable(rows []bench.Row, threads, rounds int) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "model\tbatch\tphase\tmode\thandnet img/s\tpytorch img/s\thandnet/pytorch\t\n")
	for _, r := range rows {
		py, ratio := "-", "-"
		if r.PyTorchImagesPerSec != nil {
			py, ratio = fmt.Sprintf("%.1f", *r.PyTorchImagesPerSec), fmt.Sprintf("%.2f×", *r.Ratio)
		}
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%.1f\t%s\t%s\t\n", r.Model, r.Batch, r.Phase, r.Mode, r.HandnetImagesPerSec, py, ratio)
	}
	w.Flush()
	if len(rows) > 0 {
		fmt.Printf("device %s, %d CPU threads. PyTorch runs each row's precision and layout on one batch resident on the device,\nright after handnet's side of the row", rows[0].Device, threads)
		if rounds > 1 {
			fmt.Printf(" (each side's best of %d rounds, alternately)", rounds)
		}
		fmt.Printf("; both sides flush denormal floats to zero while they measure (README, Speed);\npredict rows classify the same JPEG files end to end on both sides (PyTorch: PIL + torchvision transforms)")
		if rows[0].PyTorchNote != "" {
			fmt.Printf(" (%s)", rows[0].PyTorchNote)
		}
		fmt.Println(".")
	}
}
