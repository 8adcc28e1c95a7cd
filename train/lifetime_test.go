package train

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"testing"

	"github.com/handnet/handnet/handnet/torch"
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
// (weights, momentum buffers).
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
				before := -1
				tn.OnBatch = func(p Progress) {
					if p.Batch == 2 {
						before = torch.LiveTensors()
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
				t.Logf("live tensors after batch 2: %d; after batch 3 failed: %d", before, after)
				if after != before {
					t.Errorf("%d live tensors after the failed batch, %d before it: it leaked %d", after, before, after-before)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}
