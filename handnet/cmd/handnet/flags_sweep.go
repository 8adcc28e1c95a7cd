package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/handnet/handnet/handnet/experiment"
	"github.com/handnet/handnet/handnet/runtime/torch"
	log "github.com/sirupsen/logrus"
	"github.com/spf13/pflag"
)

// sweepFlags are the flags of the commands that train many runs into one
// folder (reproduce, audit): the folder, the published weights, and where
// the runs train — concurrently with --devices or --jobs, over workers
// sharing the folder with --shard.
type sweepFlags struct {
	out, weights, devices, shard string
	jobs                         int
}

// registerSweep defines the flags of a command that trains many runs:
// the spec's (without the model's), then --out. The command defines
// --weights and the flags of where runs train (registerWeights,
// registerPlaces) where it shows them.
func registerSweep(fs *pflag.FlagSet) (*specFlags, *sweepFlags) {
	var f specFlags
	var w sweepFlags
	f.register(fs, false)
	fs.StringVar(&w.out, "out", "", "output folder (required)")
	return &f, &w
}

func (w *sweepFlags) registerWeights(fs *pflag.FlagSet, usage string) {
	fs.StringVar(&w.weights, "weights", "", usage)
}

func (w *sweepFlags) registerPlaces(fs *pflag.FlagSet) {
	fs.StringVar(&w.devices, "devices", "", "comma-separated devices to train runs on concurrently, one run each (e.g. cuda:0,cuda:1)")
	fs.IntVar(&w.jobs, "jobs", 1, "runs to train concurrently on --device (on the CPU, each gets its share of the threads)")
	fs.StringVar(&w.shard, "shard", "", "I/N: this worker's share of the runs (default: $JOB_COMPLETION_INDEX/$JOB_COMPLETIONS of a Kubernetes Indexed Job, $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT of a Slurm array, else 0/1)")
}

// check refuses positional arguments and a command line without --out.
func (w *sweepFlags) check(args []string) error {
	if len(args) > 0 {
		return usagef("unexpected arguments %q", args)
	}
	if w.out == "" {
		return usagef("--out is required")
	}
	return nil
}

// checkWeights refuses --weights that are not there.
func (w *sweepFlags) checkWeights() error {
	if w.weights == "" {
		return nil
	}
	return flagError(experiment.CheckWeights(w.weights))
}

// sweep is where this worker trains its runs.
type sweep struct {
	out           string
	shard, shards int
	slots         []experiment.Slot
}

// start finds this worker's share of the runs and the slots they train
// in. With more than one slot, it first trains the runs in worker
// processes, one per slot (reproduceWorkers), and leaves this process one
// slot on --device, to write the tables.
func (w *sweepFlags) start(f *specFlags) (*sweep, error) {
	i, n, err := experiment.ParseShard(w.shard, os.Getenv)
	if err != nil {
		return nil, flagError(err)
	}
	slots, err := sweepSlots(w.devices, w.jobs, f.device, f.threads)
	if err != nil {
		return nil, err
	}
	if len(slots) > 1 {
		// Concurrent runs in one process would share libtorch's one
		// random generator (initialisation, dropout): each slot is a
		// process of its own, so a run's result does not depend on what
		// trains beside it.
		if err := reproduceWorkers(slots, i, n); err != nil {
			return nil, err
		}
		slots = []experiment.Slot{{Device: f.device, Threads: f.threads}} // then the tables, here
	}
	return &sweep{out: w.out, shard: i, shards: n, slots: slots}, nil
}

// run trains this worker's share of the runs (what they are, for the
// log) with train under Ctrl-C. ok is false when there is nothing more to
// say: an error, other workers still train the last runs (said here,
// with the tables the last of them writes), or another worker finishing
// with this one wrote the tables.
func (sw *sweep) run(what, tables string, train func(context.Context) error) (ok bool, err error) {
	ctx, stop := interruptible()
	defer stop()
	if sw.shards > 1 {
		log.Infof("worker %d of %d: training its share of %s in %s first", sw.shard, sw.shards, what, sw.out)
	}
	err = train(ctx)
	switch {
	case errors.Is(err, experiment.ErrStudyElsewhere):
		fmt.Printf("worker %d/%d done: %v; the last to finish writes %s\n", sw.shard, sw.shards, err, filepath.Join(sw.out, tables))
		return false, nil
	case errors.Is(err, experiment.ErrTablesWritten):
		fmt.Printf("worker %d/%d done: %v: %s\n", sw.shard, sw.shards, err, filepath.Join(sw.out, tables))
		return false, nil
	}
	return err == nil, err
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
	threads = experiment.ShareThreads(threads, jobs)
	slots := make([]experiment.Slot, jobs)
	for i := range slots {
		slots[i] = experiment.Slot{Device: device, Threads: threads}
	}
	return slots, nil
}
