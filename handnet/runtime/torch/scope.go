package torch

import (
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// Scope owns the tensors made inside a piece of torch work and frees them all
// at Close, except those handed out with Keep: the one place where
// intermediate tensors are freed, instead of a MustDrop after every op.
// (libtorch's C memory is invisible to Go's garbage collector, so a tensor
// that is not freed holds its memory until a finalizer happens to run.)
//
//	s := torch.NewScope()
//	defer s.Close()
//	h := s.T(conv.Forward(x))
//	h = s.T(h.MustRelu(false))
//	return s.Keep(s.T(fc.Forward(h)))
//
// Dropping a handle does not free memory autograd still needs: the graph
// holds its own references. A Scope is used by one goroutine.
type Scope struct {
	live []*ts.Tensor
	kept map[*ts.Tensor]bool
}

// NewScope returns an empty scope.
func NewScope() *Scope { return &Scope{} }

// T adds t to the scope and returns it.
func (s *Scope) T(t *ts.Tensor) *ts.Tensor {
	if t != nil {
		s.live = append(s.live, t)
	}
	return t
}

// Keep takes t out of the scope (it survives Close) and returns it.
func (s *Scope) Keep(t *ts.Tensor) *ts.Tensor {
	if s.kept == nil {
		s.kept = map[*ts.Tensor]bool{}
	}
	s.kept[t] = true
	return t
}

// Free frees t now, if the scope owns it (for large intermediates that
// should not wait for Close).
func (s *Scope) Free(t *ts.Tensor) {
	for i, x := range s.live {
		if x == t {
			s.live = append(s.live[:i], s.live[i+1:]...)
			if !s.kept[t] {
				t.MustDrop()
			}
			return
		}
	}
}

// Len is the number of tensors the scope owns.
func (s *Scope) Len() int { return len(s.live) }

// Close frees every tensor of the scope that was not kept. It is safe to
// call twice.
func (s *Scope) Close() {
	seen := make(map[*ts.Tensor]bool, len(s.live))
	for _, t := range s.live {
		if seen[t] || s.kept[t] {
			continue
		}
		seen[t] = true
		t.MustDrop()
	}
	s.live, s.kept = nil, nil
}

// LiveTensors is the number of tensor handles gotch has not freed: a leak
// shows as a count that grows with the work done.
func LiveTensors() int { return len(ts.ExistingTensors) }

// CrossEntropy is the mean cross-entropy of logits [N,C] against class
// indices y [N] (log-softmax then negative log-likelihood, as
// torch.nn.functional.cross_entropy). gotch's CrossEntropyForLogits leaks
// a tensor handle per call (its empty class-weight tensor).
func CrossEntropy(logits, y *ts.Tensor) *ts.Tensor {
	s := NewScope()
	defer s.Close()
	weight := s.T(ts.NewTensor())
	logSm := s.T(logits.MustLogSoftmax(-1, logits.DType(), false))
	return logSm.MustNllLoss(y, weight, 1, -100, false)
}

// Float64s returns t's values as float64s. gotch's Float64Values leaves its
// converted copy for a finalizer to free (a leaked handle per call).
func Float64s(t *ts.Tensor) []float64 {
	d := t.MustTotype(gotch.Double, false)
	defer d.MustDrop()
	out := make([]float64, d.Numel())
	d.MustCopyData(out, d.Numel())
	return out
}
