package train

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"testing"

	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/sugarme/gotch/ts"
)

// errInjected is the failure failComm injects.
var errInjected = errors.New("injected failure")

// failComm is one process posing as a data-parallel group whose gradient
// all-reduce fails at its failAt-th call: a batch step that fails half-way,
// after its forward and backward passes.
type failComm struct{ calls, failAt int }

func (c *failComm) Rank() int { return 0 }
func (c *failComm) Size() int { return 1 }
func (c *failComm) AllReduceMean(_ []*ts.Tensor, what string) error {
	if c.calls++; c.calls == c.failAt {
		return fmt.Errorf("%s: %w", what, errInjected)
	}
	return nil
}
func (c *failComm) Broadcast([]*ts.Tensor, string) error { return nil }
func (c *failComm) AllReduceSum([]float64, string) error { return nil }
func (c *failComm) Share(_, _ string, val []byte) ([]byte, error) {
	return val, nil
}

// TestFailedBatchFreesItsTensors: a batch that fails half-way (its
// gradient all-reduce returns an error) frees the batch, logits, loss and
// gradient handles it made: the live tensors when Run returns are those
// after the batch before it, which left only what the trainer keeps
// (weights, momentum buffers), less the momentum buffers, which Run frees
// as it returns.
func TestFailedBatchFreesItsTensors(t *testing.T) {
	th := torch.NewThread(0)
	defer th.Close()
	cfg := DefaultConfig()
	cfg.Epochs, cfg.BatchSize, cfg.Seed = 1, 8, 4
	// With the collector off only explicit frees release tensors: gotch's
	// finalizers cannot hide a leak, and the counts are exact.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	for _, scaled := range []bool{false, true} {
		t.Run(fmt.Sprintf("scaled=%v", scaled), func(t *testing.T) {
			err := th.Do(func() error {
				tn, _ := smallRun(t, 48, cfg, nil)
				if scaled {
					tn.Scaler = &Scaler{Scale: 1024}
				}
				tn.Comm = &failComm{failAt: 3}
				before, momentum := -1, 0
				tn.OnBatch = func(p Progress) {
					if p.Batch == 2 {
						before, momentum = torch.LiveTensors(), len(tn.opt.State())
					}
				}
				_, err := tn.Run(context.Background(), false)
				after := torch.LiveTensors()
				if !errors.Is(err, errInjected) {
					return fmt.Errorf("run: err = %v, want the injected failure of batch 3", err)
				}
				if before < 0 {
					return errors.New("OnBatch was not called after batch 2")
				}
				t.Logf("live tensors after batch 2: %d (%d momentum buffers); after batch 3 failed: %d", before, momentum, after)
				if momentum == 0 {
					t.Errorf("no momentum buffers after batch 2")
				}
				if want := before - momentum; after != want {
					t.Errorf("%d live tensors after the failed batch, %d before it less %d momentum buffers: it leaked %d", after, before, momentum, after-want)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestLiveTensorsAfterRuns: Run frees what it made, its optimizer's
// momentum buffers too, on every return: one Trainer run twice (a run,
// then its resume for one more epoch) leaves the live tensors as they were
// before the first run, and so does a run that fails half-way.
func TestLiveTensorsAfterRuns(t *testing.T) {
	th := torch.NewThread(0)
	defer th.Close()
	cfg := DefaultConfig()
	cfg.Epochs, cfg.BatchSize, cfg.Seed = 1, 8, 4
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	err := th.Do(func() error {
		tn, _ := smallRun(t, 16, cfg, nil)
		momentum := 0
		tn.OnEpoch = func(EpochStats) { momentum = len(tn.opt.State()) }
		start := torch.LiveTensors()
		for _, step := range []struct {
			name   string
			epochs int
			resume bool
			comm   Comm
			want   error
		}{
			{"the first run", 1, false, nil, nil},
			{"the resumed run on the same Trainer", 2, true, nil, nil},
			{"a run that failed", 3, true, &failComm{failAt: 2}, errInjected},
		} {
			tn.Config.Epochs = step.epochs
			if step.comm != nil {
				tn.Comm = step.comm
			}
			if _, err := tn.Run(context.Background(), step.resume); !errors.Is(err, step.want) || (err == nil) != (step.want == nil) {
				return fmt.Errorf("%s: err = %v, want %v", step.name, err, step.want)
			}
			if momentum == 0 {
				t.Errorf("%s: no momentum buffers at the end of an epoch", step.name)
			}
			if live := torch.LiveTensors(); live != start {
				t.Errorf("after %s: %d live tensors, %d before the first: it leaked %d (%d momentum buffers)", step.name, live, start, live-start, momentum)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSGDClose: Close frees the momentum buffers the steps made, and a
// second Close does nothing.
func TestSGDClose(t *testing.T) {
	th := torch.NewThread(0)
	defer th.Close()
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	cfg := DefaultConfig()
	cfg.BatchSize, cfg.Seed = 8, 4
	err := th.Do(func() error {
		tn, _ := smallRun(t, 16, cfg, nil)
		m := tn.Model
		start := torch.LiveTensors()
		opt := NewSGD(m.Trainable(), 0.01, 0.9, 0)
		ep := tn.Train.Epoch(0, 0)
		defer ep.Close()
		b, err := ep.Next()
		if err != nil {
			return err
		}
		s := torch.NewScope()
		loss := s.T(torch.CrossEntropy(s.T(m.Forward(b.X, true)), b.Y))
		err = loss.Backward()
		if err == nil {
			err = opt.Step()
		}
		s.Close()
		b.Drop()
		if err != nil {
			return err
		}
		n := len(opt.State())
		if n == 0 {
			t.Fatal("no momentum buffers after a step")
		}
		if live := torch.LiveTensors(); live != start+n {
			t.Errorf("after a step: %d live tensors, want %d (%d before, %d momentum buffers)", live, start+n, start, n)
		}
		opt.Close()
		if live := torch.LiveTensors(); live != start {
			t.Errorf("after Close: %d live tensors, %d before the SGD: %d not freed", live, start, live-start)
		}
		if st := opt.State(); len(st) != 0 {
			t.Errorf("after Close: %d momentum buffers in State", len(st))
		}
		opt.Close()
		if live := torch.LiveTensors(); live != start {
			t.Errorf("after a second Close: %d live tensors, want %d", live, start)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
