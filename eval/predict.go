// Package eval measures trained models: predictions over a loader, the
// confusion matrix, per-class accuracy, the study's error decomposition
// (gender, dorsal/palmar, left/right) and the most confident mistakes.
package eval

import (
	"math"

	"github.com/handnet/handnet/handnet/torch"
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
	Loss    float64     // mean cross-entropy
}

// Forward computes logits for a batch in evaluation mode.
type Forward func(x *ts.Tensor) *ts.Tensor

// Predict runs forward over every batch of l with gradients off. Call it on
// a torch thread.
func Predict(forward Forward, l *vision.Loader) (*Predictions, error) {
	p := &Predictions{}
	var lossSum float64
	err := torch.NoGrad(func() error {
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
			logits := forward(b.X)
			loss := logits.CrossEntropyForLogits(b.Y)
			lossSum += loss.Float64Values()[0] * float64(len(b.Indices))
			loss.MustDrop()
			probs := logits.MustSoftmax(-1, gotch.Float, true).MustTo(gotch.CPU, true)
			vals := probs.Vals().([]float32)
			probs.MustDrop()
			k := len(vals) / len(b.Indices)
			for r := range b.Indices {
				row := append([]float32(nil), vals[r*k:(r+1)*k]...)
				p.Probs = append(p.Probs, row)
				p.Pred = append(p.Pred, argmax(row))
			}
			p.Indices = append(p.Indices, b.Indices...)
			p.Labels = append(p.Labels, b.Labels...)
			b.Drop()
		}
	})
	if err != nil {
		return nil, err
	}
	if n := len(p.Labels); n > 0 {
		p.Loss = lossSum / float64(n)
	}
	return p, nil
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
