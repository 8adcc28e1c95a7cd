// Package train is the training loop: SGD with momentum, learning-rate
// schedules, per-epoch validation, best/last checkpoints, exact resume,
// and the history of a run.
package train

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/handnet/handnet/eval"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/native"
	"github.com/handnet/handnet/handnet/torch"
	"github.com/handnet/handnet/vision"
	"github.com/sugarme/gotch"
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

// History is a run's epochs in order.
type History []EpochStats

// Best is the best epoch (1-based) by validation accuracy, the earliest on
// ties; 0 for an empty history. It is the one definition of "best": the
// trainer's best checkpoint, the report and reproduce's choices use it.
func (h History) Best() int {
	best, acc := 0, math.Inf(-1)
	for _, e := range h {
		if e.ValAcc > acc {
			best, acc = e.Epoch, e.ValAcc
		}
	}
	return best
}

// BestValAcc is the validation accuracy of the best epoch (0 when empty).
func (h History) BestValAcc() float64 {
	if b := h.Best(); b > 0 {
		return h[b-1].ValAcc
	}
	return 0
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

// Scaler is mixed-precision loss scaling, as torch.cuda.amp.GradScaler with
// its defaults: the loss is multiplied by Scale before the backward pass so
// that small fp16 gradients do not flush to zero; the gradients are divided
// by it before the step; a step whose gradients hold an infinity or NaN is
// skipped and the scale halved; after 2000 good steps in a row it doubles.
type Scaler struct {
	Scale float64 `json:"scale"`
	Good  int     `json:"good"`  // good steps since the last change
	Skips int     `json:"skips"` // steps skipped so far
}

// NewScaler returns a scaler at GradScaler's initial scale, 2^16.
func NewScaler() *Scaler { return &Scaler{Scale: 65536} }

// update records a step's outcome.
func (s *Scaler) update(foundInf bool) {
	if foundInf {
		s.Scale *= 0.5
		s.Good = 0
		s.Skips++
		return
	}
	if s.Good++; s.Good >= 2000 {
		s.Scale *= 2
		s.Good = 0
	}
}

// Checkpoint file names inside a run folder: the best epoch's weights, the
// latest state (also mid-epoch), and the state at the last epoch boundary
// (what a run resumed with another world size restarts from).
const (
	BestCheckpoint  = "best.safetensors"
	LastCheckpoint  = "last.safetensors"
	EpochCheckpoint = "epoch.safetensors"
)

// Comm connects the processes of a data-parallel run (handnet/dist.Group
// implements it). Every rank calls its methods in the same order; what
// names the call in errors.
type Comm interface {
	Rank() int
	Size() int
	// AllReduceMean averages tensors in place over the ranks.
	AllReduceMean(tensors []*ts.Tensor, what string) error
	// Broadcast copies rank 0's tensors into every rank's.
	Broadcast(tensors []*ts.Tensor, what string) error
	// AllReduceSum sums host values over the ranks, in place.
	AllReduceSum(vals []float64, what string) error
	// Share returns rank 0's val on every rank.
	Share(key, what string, val []byte) ([]byte, error)
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
}

func (t *Trainer) rank() int {
	if t.Comm == nil {
		return 0
	}
	return t.Comm.Rank()
}

func (t *Trainer) size() int {
	if t.Comm == nil {
		return 1
	}
	return t.Comm.Size()
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
	t.opt = NewSGD(t.Params, t.Config.LR, t.Config.Momentum, t.Config.WeightDecay)
	t.state = State{Config: t.Config, BestValAcc: -1, WorldSize: t.size(), Scaler: t.Scaler}
	if t.Scaler == nil && t.Model.Precision() == model.FP16 {
		t.state.Scaler = NewScaler()
	}
	if resume {
		scaler := t.state.Scaler
		if err := t.restore(); err != nil {
			return nil, err
		}
		if t.state.Scaler == nil || scaler == nil {
			t.state.Scaler = scaler // precision changed: start its scale afresh
		}
		// A process killed after saving the last checkpoint at an epoch's end
		// but before the files that follow it: bring them up to date.
		if t.state.Batch == 0 && t.state.Epoch > 0 && len(t.state.History) == t.state.Epoch {
			if err := t.markEpoch(); err != nil {
				return nil, err
			}
			if err := t.writeHistory(); err != nil {
				return nil, err
			}
		}
	} else {
		if t.Comm != nil {
			if err := t.Comm.Broadcast(tensors(t.Model.Named()), "the broadcast of the initial weights"); err != nil {
				return nil, err
			}
		}
		// The first epoch boundary: where a resume with another world size
		// restarts when the first epoch was not finished.
		if err := t.save(EpochCheckpoint, true); err != nil {
			return nil, err
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
			if err := t.save(BestCheckpoint, false); err != nil {
				return t.state.History, err
			}
		}
		if err := t.save(LastCheckpoint, true); err != nil {
			return t.state.History, err
		}
		if err := t.markEpoch(); err != nil {
			return t.state.History, err
		}
		if err := t.writeHistory(); err != nil {
			return t.state.History, err
		}
		if t.OnEpoch != nil {
			t.OnEpoch(st)
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
	if t.Comm != nil {
		what := fmt.Sprintf("the validation all-reduce of epoch %d", e+1)
		pred, err = pred.Merge(t.Val.Indices(), t.Val.Label, len(t.Model.Config.Classes),
			func(v []float64) error { return t.Comm.AllReduceSum(v, what) })
		if err != nil {
			return nil, fmt.Errorf("validation: %w", err)
		}
	}
	return pred, nil
}

func tensors(named []model.NamedTensor) []*ts.Tensor {
	out := make([]*ts.Tensor, len(named))
	for i, nt := range named {
		out[i] = nt.Tensor
	}
	return out
}

// grads returns the gradients of the parameters that have one; drop them
// after use (they are handles of their own on the gradients).
func (t *Trainer) grads() ([]*ts.Tensor, error) {
	var out []*ts.Tensor
	for _, p := range t.Params {
		g, err := p.Tensor.Grad(false)
		if err != nil {
			return nil, fmt.Errorf("grad of %s: %w", p.Name, err)
		}
		if !g.MustDefined() {
			g.MustDrop()
			continue
		}
		out = append(out, g)
	}
	return out, nil
}

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
	flushedSeen := t.state.Seen
	// flush adds the batches since the last flush to the epoch's sums (over
	// every rank) and tells whether any rank was interrupted.
	flush := func(b int) (stop bool, err error) {
		vals := []float64{0, 0, float64(pending), 0}
		if m.pending > 0 {
			loss, correct := m.flush()
			vals[0], vals[1] = loss, float64(correct)
		}
		if t.Comm != nil {
			if ctx.Err() != nil {
				vals[3] = 1
			}
			if err := t.Comm.AllReduceSum(vals, fmt.Sprintf("the metrics all-reduce of epoch %d, batch %d", e+1, b)); err != nil {
				return false, err
			}
		}
		if math.IsNaN(vals[0]) || math.IsInf(vals[0], 0) {
			return false, fmt.Errorf("loss is %v at epoch %d, batches up to %d: lower the learning rate (now %g)", vals[0], e+1, b, t.opt.LR())
		}
		t.state.LossSum += vals[0]
		t.state.Correct += int(vals[1])
		t.state.Seen += int(vals[2])
		pending = 0
		flushedSeen = t.state.Seen
		return vals[3] > 0, nil
	}
	interrupted := func(b int) error {
		t.state.Seconds = base + time.Since(start).Seconds()
		if err := t.save(LastCheckpoint, true); err != nil {
			return err
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
		batch, err := ep.Next()
		if err != nil {
			return err
		}
		torch.ManualSeed(stepSeed(cfg.Seed, e, b, t.rank()))
		logits := t.Model.Forward(batch.X, true)
		loss := torch.CrossEntropy(logits, batch.Y)
		if sc := t.state.Scaler; sc != nil {
			scaled := loss.MustMulScalar(ts.FloatScalar(sc.Scale), false)
			err = scaled.Backward()
			scaled.MustDrop()
		} else {
			err = loss.Backward()
		}
		if err != nil {
			return err
		}
		if t.Comm != nil {
			gs, err := t.grads()
			if err != nil {
				return err
			}
			err = t.Comm.AllReduceMean(gs, fmt.Sprintf("the gradient all-reduce of epoch %d, batch %d", e+1, b+1))
			for _, g := range gs {
				g.MustDrop()
			}
			if err != nil {
				return err
			}
		}
		if err := t.step(); err != nil {
			return err
		}
		n := len(batch.Indices)
		m.add(loss, logits, batch.Y, n)
		loss.MustDrop()
		logits.MustDrop()
		batch.Drop()
		pending += n
		t.state.Batch = b + 1
		checkpoint := cfg.CheckpointEvery > 0 && (b+1)%cfg.CheckpointEvery == 0 && b+1 < nb
		if (b+1)%every == 0 || b+1 == nb || checkpoint {
			stop, err := flush(b + 1)
			if err != nil {
				return err
			}
			if stop {
				return interrupted(b + 1)
			}
		}
		if checkpoint {
			t.state.Seconds = base + time.Since(start).Seconds()
			if err := t.save(LastCheckpoint, true); err != nil {
				return err
			}
		}
		if t.OnBatch != nil && flushedSeen > 0 {
			el := base + time.Since(start).Seconds()
			t.OnBatch(Progress{Epoch: e + 1, Epochs: cfg.Epochs, Batch: b + 1, Batches: nb,
				Loss: t.state.LossSum / float64(flushedSeen), Acc: float64(t.state.Correct) / float64(flushedSeen),
				ImagesPerSecond: float64(t.state.Seen) / el})
		}
	}
	t.state.Seconds = base + time.Since(start).Seconds()
	return nil
}

// step updates the weights; under loss scaling it first unscales the
// gradients and skips the update when they overflowed.
func (t *Trainer) step() error {
	sc := t.state.Scaler
	if sc == nil {
		return t.opt.Step()
	}
	gs, err := t.grads()
	if err != nil {
		return err
	}
	inf, err := native.Unscale(gs, 1/sc.Scale)
	if err == nil && inf {
		for _, g := range gs {
			g.MustZero_()
		}
	}
	for _, g := range gs {
		g.MustDrop()
	}
	if err != nil {
		return err
	}
	sc.update(inf)
	if inf {
		return nil
	}
	return t.opt.Step()
}

// meter sums an epoch's loss (times batch size) and correct predictions
// on the device, so that a step need not wait for the GPU to read them.
type meter struct {
	loss, correct *ts.Tensor // float64 and int64 scalars
	pending       int
}

func (m *meter) add(loss, logits, y *ts.Tensor, n int) {
	l := loss.MustDetach(false).MustTotype(gotch.Double, true).MustMulScalar(ts.FloatScalar(float64(n)), true)
	am := logits.MustArgmax([]int64{-1}, false, false)
	c := am.MustEqTensor(y, true).MustSum(gotch.Int64, true)
	if m.loss == nil {
		m.loss, m.correct = l, c
	} else {
		m.loss.MustAdd_(l)
		m.correct.MustAdd_(c)
		l.MustDrop()
		c.MustDrop()
	}
	m.pending++
}

// flush reads and clears the sums.
func (m *meter) flush() (loss float64, correct int) {
	loss, correct = torch.Float64s(m.loss)[0], int(m.correct.Int64Values()[0])
	m.drop()
	return loss, correct
}

func (m *meter) drop() {
	if m.loss != nil {
		m.loss.MustDrop()
		m.correct.MustDrop()
	}
	m.loss, m.correct, m.pending = nil, nil, 0
}

// save writes a checkpoint into the run folder (rank 0 only); the last one
// also carries the optimizer state and the resume state.
func (t *Trainer) save(name string, withState bool) error {
	if t.rank() != 0 {
		return nil
	}
	meta := map[string]string{}
	for k, v := range t.Meta {
		meta[k] = v
	}
	cfg, err := json.Marshal(t.Config)
	if err != nil {
		return err
	}
	meta["train_config"] = string(cfg)
	if n := len(t.state.History); n > 0 {
		m, err := json.Marshal(t.state.History[n-1])
		if err != nil {
			return err
		}
		meta["metrics"] = string(m)
	}
	var extra []model.NamedTensor
	if withState {
		st, err := json.Marshal(t.state)
		if err != nil {
			return err
		}
		meta["train_state"] = string(st)
		extra = t.opt.State()
	}
	return model.SaveCheckpoint(filepath.Join(t.Dir, name), t.Model, extra, meta)
}

// markEpoch makes the last checkpoint, just written at an epoch's end, the
// epoch checkpoint too (a hard link: no copy).
func (t *Trainer) markEpoch() error {
	if t.rank() != 0 {
		return nil
	}
	last, epoch := filepath.Join(t.Dir, LastCheckpoint), filepath.Join(t.Dir, EpochCheckpoint)
	if a, err := os.Stat(last); err == nil {
		if b, err := os.Stat(epoch); err == nil && os.SameFile(a, b) {
			return nil // already marked (rename between two links of one file does nothing)
		}
	}
	tmp := filepath.Join(t.Dir, "."+EpochCheckpoint+".tmp-link")
	os.Remove(tmp)
	if err := os.Link(last, tmp); err != nil {
		// No hard links on this file system: copy.
		b, err := os.ReadFile(last)
		if err != nil {
			return err
		}
		return vision.WriteFileAtomic(epoch, b)
	}
	if err := os.Rename(tmp, epoch); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// restore loads weights, momentum and state from the run folder: the last
// checkpoint, or, when the world size changed in the middle of an epoch,
// the last epoch boundary. In a data-parallel run rank 0 reads the files and
// the other ranks receive the state from it.
func (t *Trainer) restore() error {
	var momentum []string
	if t.rank() == 0 {
		st, err := t.readState(LastCheckpoint)
		if err != nil {
			return err
		}
		if was := max(st.WorldSize, 1); was != t.size() && st.Batch > 0 {
			t.logf("resume: the run was trained by %d process(es), this one has %d: restarting from the end of epoch %d (the %d batches done of epoch %d are trained again)",
				was, t.size(), st.Epoch, st.Batch, st.Epoch+1)
			if _, err := t.readState(EpochCheckpoint); err != nil {
				return fmt.Errorf("%w (a resume with another world size needs the epoch checkpoint)", err)
			}
		}
		for _, nt := range t.opt.State() {
			momentum = append(momentum, nt.Name)
		}
	}
	if t.Comm == nil {
		return nil
	}
	payload, err := json.Marshal(struct {
		State    State    `json:"state"`
		Momentum []string `json:"momentum"`
	}{t.state, momentum})
	if err != nil {
		return err
	}
	got, err := t.Comm.Share("resume", "rank 0's reading of the checkpoint to resume", payload)
	if err != nil {
		return err
	}
	var shared struct {
		State    State    `json:"state"`
		Momentum []string `json:"momentum"`
	}
	if err := json.Unmarshal(got, &shared); err != nil {
		return fmt.Errorf("resume: state from rank 0: %w", err)
	}
	if t.rank() != 0 {
		t.state = shared.State
		t.state.Config = t.Config
		if err := t.opt.ZeroBuffers(shared.Momentum); err != nil {
			return fmt.Errorf("resume: %w", err)
		}
	}
	all := append(tensors(t.Model.Named()), tensors(t.opt.State())...)
	return t.Comm.Broadcast(all, "the broadcast of the resumed weights")
}

// readState loads one of the run folder's checkpoints into the model, the
// optimizer and t.state.
func (t *Trainer) readState(name string) (State, error) {
	path := filepath.Join(t.Dir, name)
	c, err := model.ReadCheckpoint(path)
	if err != nil {
		return State{}, fmt.Errorf("resume: %w", err)
	}
	defer c.Drop()
	var st State
	if err := json.Unmarshal([]byte(c.Metadata["train_state"]), &st); err != nil {
		return State{}, fmt.Errorf("resume: %s has no training state (%v)", path, err)
	}
	if st.Config.Seed != t.Config.Seed || st.Config.BatchSize != t.Config.BatchSize || st.Config.LR != t.Config.LR {
		return State{}, fmt.Errorf("resume: %s was trained with seed %d, batch %d, lr %g; this run asks for seed %d, batch %d, lr %g",
			path, st.Config.Seed, st.Config.BatchSize, st.Config.LR, t.Config.Seed, t.Config.BatchSize, t.Config.LR)
	}
	if err := t.Model.Load(c.Tensors, model.IsOptimizerState, nil); err != nil {
		return State{}, fmt.Errorf("resume: %w", err)
	}
	if err := t.opt.Restore(c.Tensors); err != nil {
		return State{}, fmt.Errorf("resume: %w", err)
	}
	saved := st
	st.Config = t.Config // more epochs may be asked for
	st.WorldSize = t.size()
	t.state = st
	return saved, nil
}

// writeHistory writes history.json and history.csv into the run folder.
func (t *Trainer) writeHistory() error {
	if t.rank() != 0 {
		return nil
	}
	b, err := json.MarshalIndent(t.state.History, "", "  ")
	if err != nil {
		return err
	}
	if err := vision.WriteFileAtomic(filepath.Join(t.Dir, "history.json"), append(b, '\n')); err != nil {
		return err
	}
	var buf bytes.Buffer
	w := csv.NewWriter(&buf)
	w.Write([]string{"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "images_per_sec"})
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', 8, 64) }
	for _, s := range t.state.History {
		w.Write([]string{strconv.Itoa(s.Epoch), f(s.LR), f(s.TrainLoss), f(s.TrainAcc), f(s.ValLoss), f(s.ValAcc), f(s.Seconds), f(s.ImagesPerSec)})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		return fmt.Errorf("history.csv: %w", err)
	}
	return vision.WriteFileAtomic(filepath.Join(t.Dir, "history.csv"), buf.Bytes())
}

// ReadHistory reads a run folder's history.json.
func ReadHistory(dir string) (History, error) {
	b, err := os.ReadFile(filepath.Join(dir, "history.json"))
	if err != nil {
		return nil, err
	}
	var h History
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "history.json"), err)
	}
	return h, nil
}
