// Package train is the training loop: SGD with momentum, learning-rate
// schedules, per-epoch validation, best/last checkpoints, exact resume,
// and the history of a run.
//
// The loop (this file) trains and validates; what it does not do itself it
// leaves to hooks (hooks.go) called at its moments, as gomlx's training
// loop does: the checkpoints and resume (checkpoint.go), the history files
// (history.go) and the progress report are hooks the Trainer installs.
// Loss scaling is in scaler.go, the data-parallel rules in sync.go.
//
// Floor 4 (training) of handnet's layering: it imports packages of floors 0–4 only
// (README, "Packages"; tools/floors checks it).
package train

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/handnet/handnet/eval"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/handnet/handnet/vision"
	"github.com/sugarme/gotch/ts"
)

// Config holds the training hyper-parameters. The defaults are the study's.
type Config struct {
	Epochs      int     `json:"epochs"`
	BatchSize   int     `json:"batch_size"`
	LR          float64 `json:"lr"`
	Momentum    float64 `json:"momentum"`
	WeightDecay float64 `json:"weight_decay"`
	Schedule    string  `json:"schedule"`  // none, step or cosine
	StepSize    int     `json:"step_size"` // epochs between step decays
	Gamma       float64 `json:"gamma"`     // step decay factor
	Seed        uint64  `json:"seed"`
	// CheckpointEvery writes the last checkpoint every that many batches
	// within an epoch too (0: at epoch ends and on interruption only).
	CheckpointEvery int `json:"checkpoint_every,omitempty"`
}

// DefaultConfig is the study's set-up: SGD momentum 0.9, batch 16, 10
// epochs, learning rate 0.0025, no schedule.
func DefaultConfig() Config {
	return Config{Epochs: 10, BatchSize: 16, LR: 0.0025, Momentum: 0.9, Schedule: "none", StepSize: 5, Gamma: 0.1, Seed: vision.DefaultSeed}
}

// Validate checks the values: every float must be finite (NaN and ±Inf
// are refused, naming the value).
func (c Config) Validate() error {
	finite := func(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
	switch {
	case c.Epochs <= 0:
		return fmt.Errorf("epochs %d, want > 0", c.Epochs)
	case c.BatchSize <= 0:
		return fmt.Errorf("batch size %d, want > 0", c.BatchSize)
	case !finite(c.LR) || c.LR <= 0:
		return fmt.Errorf("learning rate %v, want a finite number > 0", c.LR)
	case !finite(c.Momentum) || c.Momentum < 0 || c.Momentum >= 1:
		return fmt.Errorf("momentum %v, want 0 <= m < 1", c.Momentum)
	case !finite(c.WeightDecay) || c.WeightDecay < 0:
		return fmt.Errorf("weight decay %v, want a finite number >= 0", c.WeightDecay)
	case !finite(c.Gamma):
		return fmt.Errorf("gamma %v, want a finite number", c.Gamma)
	case c.CheckpointEvery < 0:
		return fmt.Errorf("checkpoint every %d batches, want >= 0", c.CheckpointEvery)
	}
	switch c.Schedule {
	case "", "none", "cosine":
	case "step":
		if c.StepSize <= 0 || c.Gamma <= 0 {
			return fmt.Errorf("step schedule needs step size > 0 and gamma > 0 (got %d, %v)", c.StepSize, c.Gamma)
		}
	default:
		return fmt.Errorf("schedule %q: want none, step or cosine", c.Schedule)
	}
	return nil
}

// LRAt is the learning rate of epoch e (0-based) under the schedule.
func (c Config) LRAt(e int) float64 {
	switch c.Schedule {
	case "step":
		return c.LR * math.Pow(c.Gamma, float64(e/c.StepSize))
	case "cosine":
		return c.LR * 0.5 * (1 + math.Cos(math.Pi*float64(e)/float64(c.Epochs)))
	}
	return c.LR
}

// EpochStats are one epoch's figures.
type EpochStats struct {
	Epoch        int     `json:"epoch"` // 1-based
	LR           float64 `json:"lr"`
	TrainLoss    float64 `json:"train_loss"`
	TrainAcc     float64 `json:"train_acc"`
	ValLoss      float64 `json:"val_loss"`
	ValAcc       float64 `json:"val_acc"`
	Seconds      float64 `json:"seconds"`
	ImagesPerSec float64 `json:"images_per_sec"` // training images per second
}

// Progress is reported after every training batch.
type Progress struct {
	Epoch, Epochs   int // 1-based epoch
	Batch, Batches  int // batches done in this epoch
	Loss, Acc       float64
	ImagesPerSecond float64
}

// State is what a resumed run needs besides weights and momentum: where it
// stopped and what it had measured. It is saved in the last checkpoint.
type State struct {
	Epoch      int     `json:"epoch"` // 0-based epoch in progress
	Batch      int     `json:"batch"` // next batch of that epoch
	LossSum    float64 `json:"loss_sum"`
	Correct    int     `json:"correct"`
	Seen       int     `json:"seen"`
	Seconds    float64 `json:"seconds"` // training time spent in this epoch
	History    History `json:"history"`
	BestValAcc float64 `json:"best_val_acc"`
	BestEpoch  int     `json:"best_epoch"`
	Config     Config  `json:"config"`
	// WorldSize is the number of data-parallel processes (0 or 1: one). A run
	// resumed with another world size restarts from the last epoch boundary.
	WorldSize int `json:"world_size,omitempty"`
	// Scaler is the loss scale of an fp16 run (nil otherwise).
	Scaler *Scaler `json:"scaler,omitempty"`
}

// ErrInterrupted is returned (wrapped) when the context ends a run early;
// the last checkpoint then holds everything needed to resume.
var ErrInterrupted = errors.New("training interrupted")

// Trainer trains one model. Run it on the model's torch thread.
//
// With Comm it is one rank of a data-parallel run, as PyTorch's
// DistributedDataParallel: Train and Val serve this rank's shards, the
// initial weights come from rank 0, gradients are averaged after every
// backward pass, metrics are summed over the ranks, and only rank 0 writes
// to Dir. An interrupt on any rank stops every rank after the same batch.
type Trainer struct {
	Model  *model.Model
	Params []model.NamedTensor // trainable parameters; nil means Model.Trainable()
	Train  *vision.Loader
	Val    *vision.Loader
	Config Config
	Dir    string            // run folder for checkpoints and history
	Meta   map[string]string // extra checkpoint metadata
	Comm   Comm              // nil: one process
	// OnBatch and OnEpoch, when set, are called after every batch / epoch;
	// Logf, when set, receives notes (e.g. how a resume proceeds).
	OnBatch func(Progress)
	OnEpoch func(EpochStats)
	Logf    func(format string, args ...any)
	// Scaler scales the loss (see Scaler); nil: a new one for fp16 models,
	// none otherwise. The run's copy is saved in checkpoints.
	Scaler *Scaler

	opt   *SGD
	state State
	hooks []hook // the run's: the trainer's own, then extraHooks
	// extraHooks are called after the trainer's own (checkpoints, history
	// files, then OnBatch and OnEpoch); tests set them.
	extraHooks []hook
}

func (t *Trainer) logf(format string, args ...any) {
	if t.Logf != nil {
		t.Logf(format, args...)
	}
}

// stepSeed seeds libtorch's generator for one batch, so that dropout masks
// depend only on (seed, epoch, batch, rank): a resumed run draws the same
// ones, and the ranks of a data-parallel run draw different ones.
func stepSeed(seed uint64, epoch, batch, rank int) int64 {
	x := seed*0x9E3779B97F4A7C15 + uint64(epoch)<<32 + uint64(batch)
	x ^= uint64(rank) * 0xD1B54A32D192ED03
	x ^= x >> 31
	x *= 0xBF58476D1CE4E5B9
	x ^= x >> 29
	return int64(x >> 1)
}

// Run trains for the configured epochs; with resume it continues from the
// run folder's last checkpoint. When ctx ends, it finishes the current
// batch, saves the last checkpoint and returns ErrInterrupted.
func (t *Trainer) Run(ctx context.Context, resume bool) (History, error) {
	if err := t.Config.Validate(); err != nil {
		return nil, err
	}
	if t.Params == nil {
		t.Params = t.Model.Trainable()
	}
	// The run owns its optimizer: the momentum buffers live until Run
	// returns (the last checkpoint keeps them for a resume).
	opt := NewSGD(t.Params, t.Config.LR, t.Config.Momentum, t.Config.WeightDecay)
	defer opt.Close()
	t.opt = opt
	t.state = State{Config: t.Config, BestValAcc: -1, WorldSize: t.size(), Scaler: t.Scaler}
	if t.Scaler == nil && t.Model.Precision() == model.FP16 {
		t.state.Scaler = NewScaler()
	}
	t.hooks = append(t.ownHooks(), t.extraHooks...)
	if resume {
		if err := t.resume(); err != nil {
			return nil, err
		}
	} else if err := t.broadcastInitial(); err != nil {
		return nil, err
	}
	for _, h := range t.hooks {
		if h.Start != nil {
			if err := h.Start(resume); err != nil {
				return nil, err
			}
		}
	}
	cfg := t.Config
	for e := t.state.Epoch; e < cfg.Epochs; e++ {
		t.opt.SetLR(cfg.LRAt(e))
		if err := t.trainEpoch(ctx, e); err != nil {
			return t.state.History, err
		}
		if err := checkEpochFinite(t.Model, e); err != nil {
			return t.state.History, err
		}
		pred, err := t.validate(e)
		if err != nil {
			return t.state.History, err
		}
		st := EpochStats{Epoch: e + 1, LR: t.opt.LR(), TrainLoss: t.state.LossSum / float64(t.state.Seen),
			TrainAcc: float64(t.state.Correct) / float64(t.state.Seen), ValLoss: pred.Loss, ValAcc: pred.Accuracy(),
			Seconds: t.state.Seconds, ImagesPerSec: float64(t.state.Seen) / t.state.Seconds}
		t.state.History = append(t.state.History, st)
		t.state.Epoch, t.state.Batch, t.state.LossSum, t.state.Correct, t.state.Seen, t.state.Seconds = e+1, 0, 0, 0, 0, 0
		if best := t.state.History.Best(); best == st.Epoch {
			t.state.BestValAcc, t.state.BestEpoch = st.ValAcc, st.Epoch
		}
		for _, h := range t.hooks {
			if h.Epoch != nil {
				if err := h.Epoch(st); err != nil {
					return t.state.History, err
				}
			}
		}
	}
	return t.state.History, nil
}

// checkEpochFinite stops training after epoch e (0-based) when a weight or
// buffer holds NaN or ±Inf, naming the first such tensor, before anything
// of the epoch is saved.
func checkEpochFinite(m *model.Model, e int) error {
	if err := model.CheckFiniteNamed(m.Named()); err != nil {
		return fmt.Errorf("training diverged in epoch %d: %w; nothing of this epoch was saved (resume from the last epoch with a lower learning rate)", e+1, err)
	}
	return nil
}

// validate evaluates the model on the validation loader; in a data-parallel
// run every rank evaluates its shard and the predictions are merged.
func (t *Trainer) validate(e int) (*eval.Predictions, error) {
	pred, err := eval.Predict(func(x *ts.Tensor) (*ts.Tensor, error) { return t.Model.Forward(x, false), nil }, t.Val)
	if err != nil {
		return nil, fmt.Errorf("validation: %w", err)
	}
	if pred, err = t.mergeValidation(pred, e); err != nil {
		return nil, fmt.Errorf("validation: %w", err)
	}
	return pred, nil
}

// trainEpoch trains epoch e (0-based) from the state's next batch on,
// adding to the state's sums. After every batch it calls the hooks'
// Batch; when ctx ends it calls their Interrupted and returns
// ErrInterrupted.
func (t *Trainer) trainEpoch(ctx context.Context, e int) error {
	cfg := t.Config
	ep := t.Train.Epoch(e, t.state.Batch)
	defer ep.Close()
	nb := t.Train.Batches()
	start := time.Now()
	base := t.state.Seconds
	m := &meter{}
	defer m.drop()
	// Reading the loss makes the CPU wait for the GPU: on CUDA, read the
	// sums every few steps only.
	every := 1
	if t.Model.VS.Device().IsCuda() {
		every = 25
	}
	pending := 0 // images trained on since the last flush, on this rank
	// flush adds the batches since the last flush to the epoch's sums (over
	// every rank) and tells whether any rank was interrupted.
	flush := func(b int) (stop bool, err error) {
		vals := []float64{0, 0, float64(pending), 0}
		if m.pending > 0 {
			loss, correct := m.flush()
			vals[0], vals[1] = loss, float64(correct)
		}
		if stop, err = t.sumMetrics(ctx, vals, e, b); err != nil {
			return false, err
		}
		if math.IsNaN(vals[0]) || math.IsInf(vals[0], 0) {
			return false, fmt.Errorf("loss is %v at epoch %d, batches up to %d: lower the learning rate (now %g)", vals[0], e+1, b, t.opt.LR())
		}
		t.state.LossSum += vals[0]
		t.state.Correct += int(vals[1])
		t.state.Seen += int(vals[2])
		pending = 0
		return stop, nil
	}
	interrupted := func(b int) error {
		t.state.Seconds = base + time.Since(start).Seconds()
		for _, h := range t.hooks {
			if h.Interrupted != nil {
				if err := h.Interrupted(); err != nil {
					return err
				}
			}
		}
		return fmt.Errorf("%w at epoch %d, batch %d of %d", ErrInterrupted, e+1, b, nb)
	}
	for b := t.state.Batch; b < nb; b++ {
		if t.Comm == nil && ctx.Err() != nil {
			if _, err := flush(b); err != nil {
				return err
			}
			return interrupted(b)
		}
		n, err := t.trainBatch(ep, e, b, m)
		if err != nil {
			return err
		}
		pending += n
		t.state.Batch = b + 1
		synced := (b+1)%every == 0 || b+1 == nb || t.syncDue(b+1, nb)
		if synced {
			stop, err := flush(b + 1)
			if err != nil {
				return err
			}
			if stop {
				return interrupted(b + 1)
			}
		}
		t.state.Seconds = base + time.Since(start).Seconds()
		s := batchStep{Epoch: e + 1, Epochs: cfg.Epochs, Batch: b + 1, Batches: nb, Synced: synced}
		for _, h := range t.hooks {
			if h.Batch != nil {
				if err := h.Batch(s); err != nil {
					return err
				}
			}
		}
	}
	t.state.Seconds = base + time.Since(start).Seconds()
	return nil
}

// trainBatch trains on batch b of epoch e (0-based), adds its loss and
// correct predictions to m and returns its size. It owns what it makes —
// the batch, the logits, the loss — and frees them on every return.
func (t *Trainer) trainBatch(ep *vision.Epoch, e, b int, m *meter) (int, error) {
	batch, err := ep.Next()
	if err != nil {
		return 0, err
	}
	if batch == nil {
		return 0, fmt.Errorf("epoch %d ended before its batch %d", e+1, b+1)
	}
	defer batch.Drop()
	torch.ManualSeed(stepSeed(t.Config.Seed, e, b, t.rank()))
	logits := t.Model.Forward(batch.X, true)
	defer logits.MustDrop()
	loss := torch.CrossEntropy(logits, batch.Y)
	defer loss.MustDrop()
	if err := t.backward(loss); err != nil {
		return 0, err
	}
	if err := t.allReduceGrads(e, b); err != nil {
		return 0, err
	}
	if err := t.step(); err != nil {
		return 0, err
	}
	n := len(batch.Indices)
	m.add(loss, logits, batch.Y, n)
	return n, nil
}
