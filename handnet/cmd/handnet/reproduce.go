package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/handnet/handnet/handnet/experiment"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/dist"
	"github.com/handnet/handnet/handnet/runtime/rundir"
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
			f, w := registerSweep(fs)
			w.registerWeights(fs, "torchvision's ResNet-18 ImageNet weights (handnet weights fetch resnet18): adds Part 2, the three freeze scenarios")
			tlr := fs.Float64("transfer-lr", 0.001, "learning rate of the Part 2 fine-tuning")
			w.registerPlaces(fs)
			return func(args []string) error {
				if err := w.check(args); err != nil {
					return err
				}
				if err := checkFloat("transfer-lr", *tlr, false); err != nil {
					return err
				}
				f.model, f.cfg.LR, f.dropout = "cnn", train.DefaultConfig().LR, model.FinalDropout
				base, err := f.spec()
				if err != nil {
					return err
				}
				if err := w.checkWeights(); err != nil {
					return err
				}
				sw, err := w.start(f)
				if err != nil {
					return err
				}
				st := &experiment.Study{Base: base, Out: w.out, Weights: w.weights, TransferLR: *tlr, Shard: sw.shard, Shards: sw.shards, Slots: sw.slots,
					Logf: log.Infof, Hooks: hooks}
				start := time.Now()
				var res *experiment.StudyResult
				if ok, err := sw.run("the runs", rundir.Report, func(ctx context.Context) (err error) { res, err = st.Run(ctx); return err }); !ok {
					return err
				}
				fmt.Printf("final model: dropout %s, lr %g: test accuracy %.2f %%\nreport: %s (%.1f min)\n",
					res.Final.Dropout, res.Final.LR, 100*res.Final.Test(), rundir.Folder{Dir: w.out}.Path(rundir.Report), time.Since(start).Minutes())
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
