package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/handnet/handnet/handnet/dist"
	"github.com/handnet/handnet/handnet/experiment"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/torch"
	"github.com/handnet/handnet/train"
	log "github.com/sirupsen/logrus"
	"github.com/spf13/pflag"
)

func init() {
	register(&command{
		name:  "reproduce",
		usage: "--data DIR --out DIR [--epochs N] [--split METHOD] [--seed S] [--weights FILE] [--devices LIST | --jobs N] [--shard I/N]",
		summary: "Run the study's Part 1: the CNN at 4 learning rates, then its 4 dropout placements at the best one,\n" +
			"choose the final model by validation accuracy and report its test accuracy and confusion matrix.\n" +
			"With --weights, also Part 2: ResNet-18 fine-tuned with freeze fc, layer4 and none, compared with Part 1.\n" +
			"Each experiment is a run folder under --out; finished ones are reused when the command is run again.\n" +
			"Runs train concurrently with --devices (GPUs) or --jobs (CPU), and over machines with --shard:\n" +
			"workers sharing --out never train the same run; the last to finish writes the tables.",
		setup: func(fs *pflag.FlagSet) func([]string) error {
			var f specFlags
			f.register(fs, false)
			out := fs.String("out", "", "output folder (required)")
			w := fs.String("weights", "", "torchvision's ResNet-18 ImageNet weights (handnet weights fetch resnet18): adds Part 2, the three freeze scenarios")
			tlr := fs.Float64("transfer-lr", 0.001, "learning rate of the Part 2 fine-tuning")
			devices := fs.String("devices", "", "comma-separated devices to train runs on concurrently, one run each (e.g. cuda:0,cuda:1)")
			jobs := fs.Int("jobs", 1, "runs to train concurrently on --device (on the CPU, each gets its share of the threads)")
			shard := fs.String("shard", "", "I/N: this worker's share of the runs (default: $JOB_COMPLETION_INDEX/$JOB_COMPLETIONS of a Kubernetes Indexed Job, $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT of a Slurm array, else 0/1)")
			return func(args []string) error {
				if len(args) > 0 {
					return usagef("unexpected arguments %q", args)
				}
				if *out == "" {
					return usagef("--out is required")
				}
				if err := checkFloat("transfer-lr", *tlr, false); err != nil {
					return err
				}
				f.model, f.cfg.LR, f.dropout = "cnn", train.DefaultConfig().LR, model.FinalDropout
				base, err := f.spec()
				if err != nil {
					return err
				}
				if *w != "" {
					if _, err := os.Stat(*w); err != nil {
						return fmt.Errorf("--weights: %w (fetch them with: handnet weights fetch resnet18)", err)
					}
				}
				i, n, err := parseShard(*shard, os.Getenv)
				if err != nil {
					return usagef("--shard: %v", err)
				}
				slots, err := sweepSlots(*devices, *jobs, f.device, f.threads)
				if err != nil {
					return err
				}
				if len(slots) > 1 {
					// Concurrent runs in one process would share libtorch's one
					// random generator (initialisation, dropout): each slot is a
					// process of its own, so a run's result does not depend on
					// what trains beside it.
					if err := reproduceWorkers(slots, i, n); err != nil {
						return err
					}
					slots = []experiment.Slot{{Device: f.device, Threads: f.threads}} // then the tables, here
				}
				ctx, stop := interruptible()
				defer stop()
				st := &experiment.Study{Base: base, Out: *out, Weights: *w, TransferLR: *tlr, Shard: i, Shards: n, Slots: slots, Logf: log.Infof,
					Hooks: func(prefix string) experiment.Hooks {
						if len(slots) > 1 {
							return quietHooks(prefix)
						}
						return hooks(prefix)
					}}
				if n > 1 {
					log.Infof("worker %d of %d: training its share of the runs in %s first", i, n, *out)
				}
				start := time.Now()
				res, err := st.Run(ctx)
				if errors.Is(err, experiment.ErrStudyElsewhere) {
					fmt.Printf("worker %d/%d done: %v; the last to finish writes %s\n", i, n, err, filepath.Join(*out, experiment.ReportFile))
					return nil
				}
				if err != nil {
					return err
				}
				fmt.Printf("final model: dropout %s, lr %g: test accuracy %.2f %%\nreport: %s (%.1f min)\n",
					res.Final.Dropout, res.Final.LR, 100*res.Final.Test(), filepath.Join(*out, experiment.ReportFile), time.Since(start).Minutes())
				return nil
			}
		},
	})
}

// reproduceWorkers trains the study's runs in one worker process per slot
// (reproduce --jobs 1 on the slot's device and threads, all into the same
// --out: the run folders' locks share the runs out) and waits for them.
// Worker k of this shard i/n is shard i*jobs+k of n*jobs: its share first,
// then whatever nobody has started.
func reproduceWorkers(slots []experiment.Slot, i, n int) error {
	base := cmdArgs
	for _, name := range []string{"jobs", "devices", "device", "threads", "shard"} {
		base = withoutFlag(base, name)
	}
	log.Infof("training the runs in %d worker processes (one per slot, each with its own random generator)", len(slots))
	err := dist.Launch(context.Background(), dist.LaunchOptions{NProc: len(slots), Workers: func(k int) []string {
		sl := slots[k]
		return append(append([]string(nil), base...), "--jobs", "1", "--device", sl.Device, "--threads", strconv.Itoa(sl.Threads),
			"--shard", fmt.Sprintf("%d/%d", i*len(slots)+k, n*len(slots)))
	}})
	var re *dist.RankError
	switch {
	case errors.Is(err, dist.ErrInterrupted):
		return fmt.Errorf("%w: runs already finished are kept; run the same command again to continue", train.ErrInterrupted)
	case errors.As(err, &re):
		return fmt.Errorf("reproduce worker (job %d) %v (its messages are above); the other workers were stopped", re.Rank, re.Err)
	}
	return err
}

// parseShard reads --shard I/N, or the index and count of a Kubernetes
// Indexed Job or a Slurm job array.
func parseShard(flag string, getenv func(string) string) (int, int, error) {
	s := flag
	if s == "" {
		for _, p := range [][2]string{{"JOB_COMPLETION_INDEX", "JOB_COMPLETIONS"}, {"SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"}} {
			if getenv(p[0]) != "" && getenv(p[1]) != "" {
				s = getenv(p[0]) + "/" + getenv(p[1])
				break
			}
		}
		if s == "" {
			return 0, 1, nil
		}
	}
	a, b, ok := strings.Cut(s, "/")
	i, err1 := strconv.Atoi(strings.TrimSpace(a))
	n, err2 := strconv.Atoi(strings.TrimSpace(b))
	if !ok || err1 != nil || err2 != nil || n < 1 || i < 0 || i >= n {
		return 0, 0, fmt.Errorf("%q: want I/N with 0 <= I < N, e.g. 0/2", s)
	}
	return i, n, nil
}

// sweepSlots turns --devices or --jobs into the places runs train.
func sweepSlots(devices string, jobs int, device string, threads int) ([]experiment.Slot, error) {
	if devices != "" {
		if jobs != 1 {
			return nil, usagef("--devices and --jobs: give one of them")
		}
		var slots []experiment.Slot
		for _, d := range strings.Split(devices, ",") {
			d = strings.TrimSpace(d)
			dev, err := torch.ParseDevice(d)
			if err != nil {
				return nil, usagef("--devices: %v", err)
			}
			slots = append(slots, experiment.Slot{Device: torch.DeviceName(dev), Threads: threads})
		}
		return slots, nil
	}
	if jobs < 1 {
		return nil, usagef("--jobs %d: want at least 1", jobs)
	}
	if threads == 0 {
		threads = max(1, torch.UsableCPUs()/jobs)
	}
	slots := make([]experiment.Slot, jobs)
	for i := range slots {
		slots[i] = experiment.Slot{Device: device, Threads: threads}
	}
	return slots, nil
}
