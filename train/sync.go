package train

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/handnet/handnet/eval"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/sugarme/gotch/ts"
)

// Comm connects the processes of a data-parallel run (handnet/runtime/dist.Group
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

// rank is this process's rank: 0 without Comm. Only rank 0 writes to the
// run folder and reads it on resume.
func (t *Trainer) rank() int {
	if t.Comm == nil {
		return 0
	}
	return t.Comm.Rank()
}

// size is the number of data-parallel processes: 1 without Comm.
func (t *Trainer) size() int {
	if t.Comm == nil {
		return 1
	}
	return t.Comm.Size()
}

// grads returns the gradients of the parameters that have one, as handles
// of their own that s owns.
func (t *Trainer) grads(s *torch.Scope) ([]*ts.Tensor, error) {
	var out []*ts.Tensor
	for _, p := range t.Params {
		g, err := p.Tensor.Grad(false)
		if err != nil {
			return nil, fmt.Errorf("grad of %s: %w", p.Name, err)
		}
		if s.T(g).MustDefined() {
			out = append(out, g)
		}
	}
	return out, nil
}

// broadcastInitial gives every rank rank 0's initial weights.
func (t *Trainer) broadcastInitial() error {
	if t.Comm == nil {
		return nil
	}
	return t.Comm.Broadcast(model.Tensors(t.Model.Named()), "the broadcast of the initial weights")
}

// allReduceGrads averages the gradients of batch b of epoch e (0-based)
// over the ranks.
func (t *Trainer) allReduceGrads(e, b int) error {
	if t.Comm == nil {
		return nil
	}
	s := torch.NewScope()
	defer s.Close()
	gs, err := t.grads(s)
	if err != nil {
		return err
	}
	return t.Comm.AllReduceMean(gs, fmt.Sprintf("the gradient all-reduce of epoch %d, batch %d", e+1, b+1))
}

// sumMetrics sums an epoch's metric values (loss, correct, seen, and an
// interrupt flag in vals[3]) over the ranks, after batch b of epoch e, and
// tells whether any rank was interrupted. Without Comm it leaves vals
// alone: one process checks its context before each batch.
func (t *Trainer) sumMetrics(ctx context.Context, vals []float64, e, b int) (stop bool, err error) {
	if t.Comm == nil {
		return false, nil
	}
	if ctx.Err() != nil {
		vals[3] = 1
	}
	if err := t.Comm.AllReduceSum(vals, fmt.Sprintf("the metrics all-reduce of epoch %d, batch %d", e+1, b)); err != nil {
		return false, err
	}
	return vals[3] > 0, nil
}

// mergeValidation merges the ranks' validation predictions of epoch e
// (each rank predicts its shard).
func (t *Trainer) mergeValidation(pred *eval.Predictions, e int) (*eval.Predictions, error) {
	if t.Comm == nil {
		return pred, nil
	}
	what := fmt.Sprintf("the validation all-reduce of epoch %d", e+1)
	return pred.Merge(t.Val.Indices(), t.Val.Label, len(t.Model.Config.Classes),
		func(v []float64) error { return t.Comm.AllReduceSum(v, what) })
}

// shareResume gives every rank what rank 0 restored: its state, the names
// of its momentum buffers, then the weights and the buffers themselves.
// momentum is rank 0's list (nil on the others).
func (t *Trainer) shareResume(momentum []string) error {
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
	all := append(model.Tensors(t.Model.Named()), model.Tensors(t.opt.State())...)
	return t.Comm.Broadcast(all, "the broadcast of the resumed weights")
}
