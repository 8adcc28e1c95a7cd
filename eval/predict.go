// Package eval measures trained models: predictions over a loader, the
// confusion matrix, per-class accuracy, the study's error decomposition
// (gender, dorsal/palmar, left/right) and the most confident mistakes.
//
// Floor 3 (evaluation) of handnet's layering: it imports packages of floors 0–3 only
// (README, "Packages"; tools/floors checks it).
package eval

import (
	"errors"
	"fmt"
	"math"

	"github.com/handnet/handnet/handnet/runtime/native"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/handnet/handnet/vision"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// Predictions are a model's outputs over a set of images.
type Predictions struct {
	Indices []int       // record index of each image
	Labels  []int       // true class
	Pred    []int       // predicted class (arg-max)
	Probs   [][]float32 // softmax probabilities
	Losses  []float64   // cross-entropy of each image
	Loss    float64     // mean cross-entropy
}

// ErrNonFinite is a forward pass whose output holds NaN or +Inf: an error,
// never an accuracy or loss computed from it.
var ErrNonFinite = errors.New("the model's output is not finite")

// Forward computes logits for a batch in evaluation mode: a model's
// inference form (model.Inference.Forward) or its eval-mode Forward.
type Forward func(x *ts.Tensor) (*ts.Tensor, error)

// Predict runs forward over every batch of l under inference mode (no
// gradient, no autograd records; nothing made inside outlives it). Call it
// on a torch thread. The mean loss is summed image by image in float64, in
// the loader's order, so that it does not depend on how images were batched.
func Predict(forward Forward, l *vision.Loader) (*Predictions, error) {
	p := &Predictions{}
	err := native.InferenceMode(func() error {
		e := l.Epoch(0, 0)
		defer e.Close()
		for {
			b, err := e.Next()
			if err != nil {
				return err
			}
			if b == nil {
				return nil
			}
			s := torch.NewScope()
			out, err := forward(b.X)
			if err != nil {
				s.Close()
				b.Drop()
				return err
			}
			logits := s.T(out)
			lsm := s.T(s.T(logits.MustLogSoftmax(-1, gotch.Float, false)).MustTo(gotch.CPU, false))
			vals := lsm.Vals().([]float32)
			s.Close()
			k := len(vals) / len(b.Indices)
			for j, v := range vals {
				if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) && v > 0 {
					b.Drop()
					return fmt.Errorf("%w: image %d (dataset index %d) gives %v for class %d; the weights are damaged or training diverged",
						ErrNonFinite, j/k, b.Indices[j/k], v, j%k)
				}
			}
			for r := range b.Indices {
				row := make([]float32, k)
				for j, v := range vals[r*k : (r+1)*k] {
					row[j] = float32(math.Exp(float64(v)))
				}
				p.Probs = append(p.Probs, row)
				p.Pred = append(p.Pred, argmax(row))
				p.Losses = append(p.Losses, -float64(vals[r*k+b.Labels[r]]))
			}
			p.Indices = append(p.Indices, b.Indices...)
			p.Labels = append(p.Labels, b.Labels...)
			b.Drop()
		}
	})
	if err != nil {
		return nil, err
	}
	p.Loss = meanOf(p.Losses)
	return p, nil
}

func meanOf(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	sum := 0.0
	for _, x := range v {
		sum += x
	}
	return sum / float64(len(v))
}

// Merge joins the predictions of every rank of a data-parallel run: p holds
// this rank's share of the images all (in the order of all), label gives
// their classes, k is the number of classes, and sum adds host values over
// the ranks. Every rank gets the same Predictions, equal to one process's
// over all the images.
func (p *Predictions) Merge(all []int, label func(int) int, k int, sum func([]float64) error) (*Predictions, error) {
	pos := make(map[int]int, len(all))
	for i, idx := range all {
		pos[idx] = i
	}
	n := len(all)
	// Per image: k probabilities, the loss, and 1 for "predicted here".
	buf := make([]float64, n*(k+2))
	for r, idx := range p.Indices {
		i, ok := pos[idx]
		if !ok {
			return nil, fmt.Errorf("merge: image %d is not in the evaluated set", idx)
		}
		for j, v := range p.Probs[r] {
			buf[i*(k+2)+j] = float64(v)
		}
		buf[i*(k+2)+k] = p.Losses[r]
		buf[i*(k+2)+k+1] = 1
	}
	if err := sum(buf); err != nil {
		return nil, err
	}
	out := &Predictions{Indices: append([]int(nil), all...), Labels: make([]int, n), Pred: make([]int, n), Probs: make([][]float32, n), Losses: make([]float64, n)}
	for i, idx := range all {
		row := buf[i*(k+2) : (i+1)*(k+2)]
		if row[k+1] != 1 {
			return nil, fmt.Errorf("merge: image %d was predicted by %v ranks, want exactly 1", idx, row[k+1])
		}
		out.Labels[i] = label(idx)
		out.Probs[i] = make([]float32, k)
		for j := range k {
			out.Probs[i][j] = float32(row[j])
		}
		out.Pred[i] = argmax(out.Probs[i])
		out.Losses[i] = row[k]
	}
	out.Loss = meanOf(out.Losses)
	return out, nil
}

func argmax(v []float32) int {
	best := 0
	for i, x := range v {
		if x > v[best] || math.IsNaN(float64(v[best])) {
			best = i
		}
	}
	return best
}

// Accuracy is the fraction of correct predictions.
func (p *Predictions) Accuracy() float64 {
	if len(p.Labels) == 0 {
		return 0
	}
	ok := 0
	for i := range p.Labels {
		if p.Labels[i] == p.Pred[i] {
			ok++
		}
	}
	return float64(ok) / float64(len(p.Labels))
}
