package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/handnet/handnet/eval/report"
	"github.com/handnet/handnet/handnet/experiment"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/dist"
	"github.com/handnet/handnet/handnet/runtime/rundir"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/handnet/handnet/train"
	"github.com/schollz/progressbar/v3"
	log "github.com/sirupsen/logrus"
	"github.com/spf13/pflag"
	"github.com/sugarme/gotch"
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

	precision    string
	channelsLast bool
	dataOnDevice string
}

func (f *specFlags) register(fs *pflag.FlagSet, withModel bool) {
	d := train.DefaultConfig()
	f.cache.register(fs)
	if withModel {
		fs.StringVar(&f.model, "model", "cnn", "architecture: cnn (the study's seed CNN) or resnet18")
		fs.StringVar(&f.weights, "weights", "", "resnet18: published ImageNet weights to fine-tune (handnet weights fetch resnet18); none: train from scratch")
		fs.StringVar(&f.freeze, "freeze", "none", "resnet18: fc (only the new head trains), layer4 (layer4 and the head) or none (everything)")
		fs.StringVar(&f.freezeBN, "freeze-bn", "auto", "resnet18: frozen BatchNorm layers keep their running statistics: true, false, auto (true for --freeze fc), or all (every BatchNorm, trained or not: results independent of how batches are split over processes)")
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
	fs.StringVar(&f.precision, "precision", "fp32", "forward-pass arithmetic: fp32, bf16 (autocast; CPUs with AVX-512 BF16/AMX, GPUs) or fp16 (CUDA, with loss scaling); weights and optimizer state stay fp32")
	fs.BoolVar(&f.channelsLast, "channels-last", false, "lay convolutions out channels last (NHWC), which oneDNN/cuDNN often run faster, bf16 especially")
	fs.StringVar(&f.dataOnDevice, "data-on-device", "auto", "upload the image cache to the GPU once and build batches there: auto (when it fits in 40% of the GPU's memory and --augment is at most hflip), on or off")
}

// spec is the experiment the flags describe, resolved by the library
// (experiment.Spec.Resolve), whose refusals name the flags.
func (f *specFlags) spec() (experiment.Spec, error) {
	s := f.cache.spec()
	s.Split, s.Scheme, s.Augment, s.Device, s.Train = f.split, f.scheme, f.augment, f.device, f.cfg
	s.Precision, s.ChannelsLast, s.DataOnDevice = f.precision, f.channelsLast, f.dataOnDevice
	s.Model = model.Config{Arch: f.model, Dropout: f.dropout, BatchNorm: f.bn, Freeze: f.freeze}
	s.FreezeBN, s.Weights = f.freezeBN, f.weights
	s, err := s.Resolve()
	if err != nil {
		return s, flagError(err)
	}
	if err := f.cache.limits.validate(); err != nil {
		return s, err
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
// quietHooks are the hooks of a data-parallel rank other than 0: no
// progress bars, its log lines prefixed.
func quietHooks(prefix string) experiment.Hooks {
	return experiment.Hooks{
		Logf: func(format string, args ...any) { log.Infof(prefix+format, args...) },
		OnEpoch: func(e train.EpochStats) {
			log.Infof("%sepoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1fs, %.0f img/s",
				prefix, e.Epoch, e.TrainLoss, e.TrainAcc, e.ValLoss, e.ValAcc, e.Seconds, e.ImagesPerSec)
		},
	}
}

func hooks(prefix string) experiment.Hooks {
	var (
		mu  sync.Mutex
		bar *progressbar.ProgressBar
		cb  *progressbar.ProgressBar
		// Without a terminal: log lines instead of bars (the cache's every
		// 1,000 images: 11 lines for 11k Hands, not 220).
		cacheLog = &progressLog{every: 1000, interval: logInterval, now: time.Now}
		batchLog = newProgressLog()
	)
	return experiment.Hooks{
		Logf: log.Infof,
		Cache: func(done, total int) {
			mu.Lock()
			defer mu.Unlock()
			if !stderrIsTerminal {
				if line := cacheLog.update(done, total, "images"); line != "" {
					log.Infof("decoding: %s", line)
				}
				return
			}
			if cb == nil {
				cb = newBar(total, "decoding", "images")
			}
			cb.Set(done)
		},
		OnBatch: func(p train.Progress) {
			if !stderrIsTerminal {
				if line := batchLog.update(p.Batch, p.Batches, "batches"); line != "" {
					log.Infof("%sepoch %d/%d: %s; running loss %.4f acc %.4f, %.0f img/s", prefix, p.Epoch, p.Epochs, line, p.Loss, p.Acc, p.ImagesPerSecond)
				}
				return
			}
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

// distFlags are the flags of a data-parallel run.
type distFlags struct {
	nproc         int
	oversubscribe bool
	backend       string
	timeout       time.Duration
}

func (d *distFlags) register(fs *pflag.FlagSet) {
	fs.IntVar(&d.nproc, "nproc-per-node", 0, "start N processes on this machine that train together (data-parallel, c10d); 0: one process, or as torchrun/srun launched this one")
	fs.BoolVar(&d.oversubscribe, "oversubscribe", false, "allow --nproc-per-node above this machine's GPUs (CUDA) or usable CPU cores")
	fs.StringVar(&d.backend, "dist-backend", "auto", "collectives of a data-parallel run: auto (NCCL on CUDA, Gloo on the CPU), gloo or nccl")
	fs.DurationVar(&d.timeout, "dist-timeout", dist.DefaultTimeout, "how long a rank waits for a silent peer, a collective or the rendezvous before it fails (e.g. 30s, 10m)")
}

func (d *distFlags) validate() error {
	if d.nproc < 0 {
		return usagef("--nproc-per-node %d: want 0 or more", d.nproc)
	}
	if err := d.checkDevices(); err != nil {
		return err
	}
	if d.timeout <= 0 {
		return usagef("--dist-timeout %v: want a positive duration such as 30s or 10m", d.timeout)
	}
	if _, err := dist.ParseBackend(d.backend, gotch.CPU); err != nil && d.backend != "nccl" {
		return usagef("--dist-backend: %v", err)
	}
	return nil
}

// checkDevices bounds --nproc-per-node by the devices: the GPUs when
// CUDA is there, else the usable CPU cores; --oversubscribe lifts it.
func (d *distFlags) checkDevices() error {
	if d.nproc <= 1 || d.oversubscribe {
		return nil
	}
	if gotch.CUDA.IsAvailable() {
		if n := int(gotch.CUDA.DeviceCount()); d.nproc > n {
			return usagef("--nproc-per-node %d: this machine has %d GPU(s), one rank each; use --nproc-per-node %d, or add --oversubscribe to share them", d.nproc, n, n)
		}
		return nil
	}
	if n := torch.UsableCPUs(); d.nproc > n {
		return usagef("--nproc-per-node %d: this machine has no GPU and %d usable CPU core(s), at least one per rank; use --nproc-per-node %d, or add --oversubscribe", d.nproc, n, n)
	}
	return nil
}

// dieWithLauncher asks the kernel to send SIGTERM to this rank when the
// process that started it (torchrun's agent) dies, however it dies: the
// rank then saves and stops instead of living on as an orphan.
func dieWithLauncher() {
	ppid := os.Getppid()
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(syscall.SIGTERM), 0); errno != 0 {
		log.Warnf("cannot ask for a signal when the launcher dies: %v", errno)
		return
	}
	if os.Getppid() != ppid || ppid == 1 {
		log.Error("the launcher (torchrun) is gone: stopping")
		os.Exit(1)
	}
}

// perRankFlags may differ between the ranks of one run: where files are
// (each node its own copy of the data), the device and threads, how the
// ranks were started, who decides about resuming (rank 0).
var perRankFlags = map[string]bool{"data": true, "cache-dir": true, "out": true, "device": true, "threads": true,
	"nproc-per-node": true, "oversubscribe": true, "resume": true}

// runConfig is the whole configuration a rank was started with, every
// flag's value (defaults included) but the per-rank ones: compared at the
// rendezvous.
func runConfig(fs *pflag.FlagSet) map[string]string {
	m := map[string]string{}
	fs.VisitAll(func(f *pflag.Flag) {
		if !perRankFlags[f.Name] {
			m[f.Name] = f.Value.String()
		}
	})
	return m
}

// withoutFlag removes a flag (--name V or --name=V) from command-line args.
func withoutFlag(args []string, name string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--"+name:
			i++ // its value
		case strings.HasPrefix(a, "--"+name+"="):
		default:
			out = append(out, a)
		}
	}
	return out
}

// rankContext is one process's part in a run: a data-parallel group (nil
// for a single process), its device and thread count, and its hooks.
type rankContext struct {
	group   *dist.Group
	device  string
	threads int
	hooks   experiment.Hooks
}

// joinRun reads the launch environment and, for a distributed run, joins
// the group in the rank's place (experiment.RankSlot).
func joinRun(device string, threads int, d distFlags, config map[string]string) (*rankContext, error) {
	env, ok, err := dist.FromEnv(os.Getenv)
	if err != nil {
		return nil, usagef("%v", err)
	}
	rc := &rankContext{device: device, threads: threads, hooks: hooks("")}
	if !ok {
		return rc, nil
	}
	if env.Launcher == "torchrun" {
		dieWithLauncher() // handnet's own launcher sets it when it starts the ranks
	}
	slot, dev, err := experiment.RankSlot(env, device, threads)
	if err != nil {
		return nil, flagError(err)
	}
	rc.device, rc.threads = slot.Device, slot.Threads
	if env.Rank != 0 {
		prefix := ""
		if env.Launcher != "handnet" { // handnet's launcher prefixes the lines itself
			prefix = fmt.Sprintf("rank %d: ", env.Rank)
		}
		rc.hooks = quietHooks(prefix)
	}
	rc.group, err = dist.Join(env, dist.Options{Backend: d.backend, Device: dev, Timeout: d.timeout, Logf: log.Infof, Config: config})
	if err != nil {
		return nil, err
	}
	return rc, nil
}

// finish leaves the group: a failure is announced to the other ranks.
func (rc *rankContext) finish(err error) {
	if rc.group == nil {
		return
	}
	if err != nil && !errors.Is(err, train.ErrInterrupted) {
		rc.group.Abort(err)
		return
	}
	rc.group.Close()
}

// launch starts --nproc-per-node ranks of this command and waits for them.
func launch(n int, out string) error {
	err := dist.Launch(context.Background(), dist.LaunchOptions{NProc: n, Args: withoutFlag(cmdArgs, "nproc-per-node")})
	var re *dist.RankError
	switch {
	case errors.Is(err, dist.ErrInterrupted):
		return fmt.Errorf("interrupted: the last checkpoint is in %s; continue with the same command plus --resume", out)
	case errors.As(err, &re):
		return fmt.Errorf("%v (its messages are above); the other ranks were stopped", re)
	}
	return err
}

func init() {
	register(&command{
		name:  "train",
		usage: "--data DIR --out RUN [--model cnn] [--dropout NAME] [--lr LR] [--epochs N] [--batch-size N] [--split METHOD] [--seed S] [--device DEV] [--nproc-per-node N] [--resume]",
		summary: "Train a model and evaluate its best checkpoint on the test split.\n" +
			"RUN receives checkpoints (best/last .safetensors), history.csv/.json, report.md, metrics.json and plots.\n" +
			"Ctrl-C saves the last checkpoint; --resume continues from it.\n" +
			"Data-parallel over several processes: --nproc-per-node N, or launch it with torchrun (--no-python),\n" +
			"srun, or a Kubernetes PyTorchJob; --batch-size is per process.",
		setup: func(fs *pflag.FlagSet) func([]string) error {
			var f specFlags
			var d distFlags
			f.register(fs, true)
			d.register(fs)
			out := fs.String("out", "", "run folder (required): new or empty, or a run to --resume")
			resume := fs.Bool("resume", false, "continue the run in --out from its last checkpoint")
			return func(args []string) (err error) {
				if len(args) > 0 {
					return usagef("unexpected arguments %q", args)
				}
				if *out == "" {
					return usagef("--out is required")
				}
				if err := experiment.CheckOut(*out); err != nil {
					return flagError(err)
				}
				if err := d.validate(); err != nil {
					return err
				}
				s, err := f.spec()
				if err != nil {
					return err
				}
				if err := experiment.CheckMemory(s, d.nproc); err != nil {
					return err // before any rank starts or any data is read
				}
				if d.nproc > 0 && os.Getenv("HANDNET_LAUNCHER") == "" {
					return launch(d.nproc, *out)
				}
				s.Title = "handnet train: " + filepath.Base(*out)
				rc, err := joinRun(f.device, f.threads, d, runConfig(fs))
				if err != nil {
					return err
				}
				defer func() { rc.finish(err) }()
				s.Device = rc.device
				th := torch.NewThread(rc.threads)
				defer th.Close()
				ctx, stop := interruptible()
				defer stop()
				r, err := experiment.Run(ctx, th, s, *out, experiment.Options{Resume: *resume, Hooks: rc.hooks, Group: rc.group})
				if errors.Is(err, train.ErrInterrupted) {
					return fmt.Errorf("%w\nthe last checkpoint is in %s; continue with the same command plus --resume", err, *out)
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
				th := torch.NewThread(*threads)
				defer th.Close()
				ev, err := experiment.Evaluate(th, *run, *ckpt, *split, *device, hooks(""))
				if err != nil {
					return flagError(err)
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
	fmt.Printf("report: %s\n", rundir.Folder{Dir: dir}.Path(rundir.Report))
}
