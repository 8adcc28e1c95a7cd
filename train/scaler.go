package train

import (
	"github.com/handnet/handnet/handnet/runtime/native"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/sugarme/gotch/ts"
)

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

// backward runs the backward pass of loss, scaled under loss scaling.
func (t *Trainer) backward(loss *ts.Tensor) error {
	sc := t.state.Scaler
	if sc == nil {
		return loss.Backward()
	}
	scaled := loss.MustMulScalar(ts.FloatScalar(sc.Scale), false)
	defer scaled.MustDrop()
	return scaled.Backward()
}

// step updates the weights; under loss scaling it first unscales the
// gradients and skips the update when they overflowed.
func (t *Trainer) step() error {
	sc := t.state.Scaler
	if sc == nil {
		return t.opt.Step()
	}
	inf, err := t.unscale(sc)
	if err != nil {
		return err
	}
	sc.update(inf)
	if inf {
		return nil
	}
	return t.opt.Step()
}

// unscale divides the gradients by the loss scale and tells whether any
// overflowed; when one did, it zeroes them all, so that the skipped step
// leaves no gradient behind.
func (t *Trainer) unscale(sc *Scaler) (inf bool, err error) {
	s := torch.NewScope()
	defer s.Close()
	gs, err := t.grads(s)
	if err != nil {
		return false, err
	}
	if inf, err = native.Unscale(gs, 1/sc.Scale); err != nil {
		return false, err
	}
	if inf {
		for _, g := range gs {
			g.MustZero_()
		}
	}
	return inf, nil
}
