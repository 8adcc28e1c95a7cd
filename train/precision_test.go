package train

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/rundir"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/handnet/handnet/vision"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// smallRun is a CNN over a slice of the synthetic set: nTrain training and
// 32 validation images.
func smallRun(t *testing.T, nTrain int, cfg Config, setup func(m *model.Model) error) (*Trainer, func() []*ts.Tensor) {
	t.Helper()
	ds, c, a := synthetic(t)
	labels := vision.Classes8.Labels(ds.Records)
	torch.ManualSeed(int64(cfg.Seed))
	m, err := model.New(model.Config{Arch: "cnn", Dropout: "none", Classes: vision.Classes8.Classes(), Width: vision.Width, Height: vision.Height,
		Mean: vision.Mean, Std: vision.Std}, gotch.CPU)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	if setup != nil {
		if err := setup(m); err != nil {
			t.Fatal(err)
		}
	}
	o := vision.LoaderOptions{BatchSize: cfg.BatchSize, Shuffle: true, Seed: cfg.Seed, Device: gotch.CPU}
	tr, err := vision.NewLoader(c, a.Indices(vision.Train)[:nTrain], labels, nil, o)
	if err != nil {
		t.Fatal(err)
	}
	o.Shuffle = false
	va, err := vision.NewLoader(c, a.Indices(vision.Val)[:32], labels, nil, o)
	if err != nil {
		t.Fatal(err)
	}
	tn := &Trainer{Model: m, Train: tr, Val: va, Config: cfg, Dir: t.TempDir()}
	weights := func() []*ts.Tensor {
		var out []*ts.Tensor
		for _, nt := range m.Named() {
			out = append(out, nt.Tensor.MustTotype(gotch.Double, false)) // a copy
		}
		return out
	}
	return tn, weights
}

func equalTensors(t *testing.T, what string, a, b []*ts.Tensor) {
	t.Helper()
	if len(a) != len(b) {
		t.Fatalf("%s: %d vs %d tensors", what, len(a), len(b))
	}
	for i := range a {
		if !a[i].MustEqual(b[i], false) {
			t.Errorf("%s: tensor %d differs", what, i)
		}
	}
}

// Loss scaling by a power of two changes no bit of fp32 training; a scale
// that overflows skips steps, halving itself, until it fits.
func TestLossScaling(t *testing.T) {
	th := torch.NewThread(0)
	defer th.Close()
	cfg := DefaultConfig()
	cfg.Epochs, cfg.BatchSize, cfg.Seed = 1, 8, 4
	err := th.Do(func() error {
		plain, w0 := smallRun(t, 48, cfg, nil)
		if _, err := plain.Run(context.Background(), false); err != nil {
			return err
		}
		scaled, w1 := smallRun(t, 48, cfg, nil)
		scaled.Scaler = &Scaler{Scale: 1024}
		if _, err := scaled.Run(context.Background(), false); err != nil {
			return err
		}
		equalTensors(t, "scale 1024 vs none", w0(), w1())
		if s := scaled.state.Scaler; s.Skips != 0 || s.Good != 6 || s.Scale != 1024 {
			t.Errorf("scaler after 6 good steps: %+v", *s)
		}

		// 2^130·loss overflows float32: steps are skipped until the scale
		// has halved to 2^127 (the loss is about 2, 2^128 > float32's max).
		huge, w2 := smallRun(t, 48, cfg, nil)
		before := w2()
		huge.Scaler = &Scaler{Scale: math.Ldexp(1, 130)}
		if _, err := huge.Run(context.Background(), false); err != nil {
			return err
		}
		s := huge.state.Scaler
		t.Logf("huge scale: %+v", *s)
		if s.Skips < 2 || s.Skips > 4 || s.Good != 6-s.Skips || s.Scale != math.Ldexp(1, 130-s.Skips) {
			t.Errorf("scaler after overflow: %+v", *s)
		}
		changed := false
		for i, w := range w2() {
			if !w.MustEqual(before[i], false) {
				changed = true
			}
		}
		if !changed {
			t.Error("no step was taken after the scale came down")
		}
		for _, h := range huge.state.History {
			if math.IsNaN(h.TrainLoss) || math.IsInf(h.TrainLoss, 0) {
				t.Errorf("train loss %v: the reported loss must be the unscaled one", h.TrainLoss)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// bf16 autocast with channels last trains on the CPU: finite losses that
// fall, float32 weights and momentum, and a checkpoint a plain model loads.
func TestBF16ChannelsLastTrains(t *testing.T) {
	th := torch.NewThread(0)
	defer th.Close()
	cfg := DefaultConfig()
	cfg.Epochs, cfg.BatchSize, cfg.Seed, cfg.LR = 3, 8, 4, 0.005
	err := th.Do(func() error {
		tn, _ := smallRun(t, 96, cfg, func(m *model.Model) error {
			if err := m.SetChannelsLast(true); err != nil {
				return err
			}
			return m.SetPrecision(model.BF16)
		})
		// The dtypes are checked after every epoch, while the run holds its
		// optimizer (it frees the momentum buffers as it returns).
		checked := 0
		tn.extraHooks = []hook{{Epoch: func(st EpochStats) error {
			momentum := tn.opt.State()
			if len(momentum) == 0 {
				t.Errorf("epoch %d: no momentum buffers", st.Epoch)
			}
			for _, nt := range append(tn.Model.Named(), momentum...) {
				if nt.Tensor.DType() != gotch.Float && nt.Tensor.DType() != gotch.Int64 {
					t.Errorf("epoch %d: %s is %v: weights and optimizer state stay float32", st.Epoch, nt.Name, nt.Tensor.DType())
				}
			}
			checked++
			return nil
		}}}
		h, err := tn.Run(context.Background(), false)
		if err != nil {
			return err
		}
		t.Logf("bf16+channels_last history: %+v", h)
		for _, e := range h {
			if math.IsNaN(e.TrainLoss) || math.IsInf(e.TrainLoss, 0) {
				t.Fatalf("epoch %d: loss %v", e.Epoch, e.TrainLoss)
			}
		}
		if h[len(h)-1].TrainLoss >= h[0].TrainLoss {
			t.Errorf("train loss did not fall: %.4f → %.4f", h[0].TrainLoss, h[len(h)-1].TrainLoss)
		}
		if checked != cfg.Epochs {
			t.Errorf("dtypes checked after %d epochs, want %d", checked, cfg.Epochs)
		}
		c, err := model.ReadCheckpoint(tn.Dir + "/" + rundir.LastCheckpoint)
		if err != nil {
			return err
		}
		defer c.Drop()
		m2, err := model.LoadModel(c, gotch.CPU)
		if err != nil {
			return err
		}
		m2.Close()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The trainer frees what it creates: the number of live tensors after each
// epoch does not grow with the epochs.
func TestLiveTensorsBounded(t *testing.T) {
	th := torch.NewThread(0)
	defer th.Close()
	cfg := DefaultConfig()
	cfg.Epochs, cfg.BatchSize, cfg.Seed = 4, 8, 4
	// With the collector off, only explicit frees (scopes, drops) release
	// tensors: gotch's finalizers cannot hide a leak, and the counts are
	// exact.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	err := th.Do(func() error {
		tn, _ := smallRun(t, 48, cfg, nil)
		var live []int
		tn.OnEpoch = func(EpochStats) { live = append(live, torch.LiveTensors()) }
		if _, err := tn.Run(context.Background(), false); err != nil {
			return err
		}
		t.Logf("live tensors after each epoch: %v (6 batches an epoch)", live)
		for e := 1; e < len(live); e++ {
			if live[e] > live[0] {
				t.Errorf("after epoch %d: %d live tensors, %d after the first: a leak", e+1, live[e], live[0])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A process killed after an epoch's last checkpoint but before the history
// and epoch files that follow it: the resume writes them, from the state.
func TestResumeAfterEpochEndCompletesFiles(t *testing.T) {
	th := torch.NewThread(0)
	defer th.Close()
	cfg := DefaultConfig()
	cfg.Epochs, cfg.BatchSize, cfg.Seed = 1, 8, 4
	err := th.Do(func() error {
		tn, _ := smallRun(t, 16, cfg, nil)
		if _, err := tn.Run(context.Background(), false); err != nil {
			return err
		}
		want, err := os.ReadFile(filepath.Join(tn.Dir, "history.csv"))
		if err != nil {
			return err
		}
		for _, f := range []string{rundir.HistoryCSV, rundir.History, rundir.EpochCheckpoint} {
			if err := os.Remove(filepath.Join(tn.Dir, f)); err != nil {
				return err
			}
		}
		if _, err := tn.Run(context.Background(), true); err != nil {
			return err
		}
		got, err := os.ReadFile(filepath.Join(tn.Dir, "history.csv"))
		if err != nil {
			return fmt.Errorf("history.csv not rewritten by the resume: %w", err)
		}
		if string(got) != string(want) {
			t.Errorf("history after resume:\n%s\nwant\n%s", got, want)
		}
		if _, err := os.Stat(filepath.Join(tn.Dir, rundir.EpochCheckpoint)); err != nil {
			t.Errorf("epoch checkpoint not restored: %v", err)
		}
		// A second resume finds everything in place and leaves no litter.
		if _, err := tn.Run(context.Background(), true); err != nil {
			return err
		}
		entries, err := os.ReadDir(tn.Dir)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if strings.Contains(e.Name(), ".tmp") {
				t.Errorf("left behind %s", e.Name())
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
