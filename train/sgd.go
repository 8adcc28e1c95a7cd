package train

import (
	"fmt"
	"slices"

	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/native"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/sugarme/gotch/ts"
)

// SGD is stochastic gradient descent with momentum and weight decay, the
// update PyTorch's torch.optim.SGD makes (dampening 0, no Nesterov), with
// the same kernels (add with alpha, mul_ then add_), so that it trains as
// PyTorch does step for step:
//
//	g ← grad + wd·p;  buf ← momentum·buf + g (buf = g at the first step);  p ← p − lr·buf
//
// It is built once per run and steps only the parameters it was given; the
// learning rate changes through SetLR, keeping the momentum buffers, which
// checkpoints save (State) and resumed runs restore (Restore). It owns
// the buffers until Close. gotch's
// optimizer keeps its state inside libtorch where it cannot be saved, and
// steps every variable created trainable; this one does neither.
type SGD struct {
	params []model.NamedTensor
	// buf are the momentum buffers, nil until the first step. The SGD owns
	// them: setBuf, the one place that replaces one, frees the old.
	buf []*ts.Tensor
	// tensors are the parameters' tensors and grads Step's gradient
	// handles, both made once so that a step allocates no slice.
	tensors, grads []*ts.Tensor
	lr             float64
	momentum       float64
	weightDecay    float64
	// Fused runs each step in one pass over each parameter on the CPU
	// (native.SGDStep) and as a handful of multi-tensor kernels (libtorch's
	// _foreach_ ops) elsewhere, instead of several kernels per parameter:
	// the same bits on the CPU, a third less memory traffic there and far
	// fewer kernel launches on a GPU. On by default.
	Fused bool
}

// NewSGD returns an optimizer over params (fused).
func NewSGD(params []model.NamedTensor, lr, momentum, weightDecay float64) *SGD {
	return &SGD{params: params, buf: make([]*ts.Tensor, len(params)),
		tensors: model.Tensors(params), grads: make([]*ts.Tensor, len(params)), lr: lr, momentum: momentum, weightDecay: weightDecay, Fused: true}
}

// SetLR changes the learning rate from the next step on.
func (o *SGD) SetLR(lr float64) { o.lr = lr }

// LR returns the learning rate.
func (o *SGD) LR() float64 { return o.lr }

// Step updates the parameters from their gradients, then zeroes the
// gradients. Parameters without a gradient are left alone.
func (o *SGD) Step() error {
	defer o.dropGrads()
	for i, p := range o.params {
		g, err := p.Tensor.Grad(false)
		if err != nil {
			return fmt.Errorf("grad of %s: %w", p.Name, err)
		}
		o.grads[i] = g
	}
	return torch.NoGrad(func() error {
		return native.SGDStep(o.tensors, o.grads, o.buf, o.lr, o.momentum, o.weightDecay, o.Fused)
	})
}

// dropGrads frees Step's gradient handles (not the gradients: the
// parameters hold their own references).
func (o *SGD) dropGrads() {
	for i, g := range o.grads {
		if g != nil {
			g.MustDrop()
			o.grads[i] = nil
		}
	}
}

// State returns the momentum buffers as named tensors ("optim.momentum."
// + parameter name) for a checkpoint.
func (o *SGD) State() []model.NamedTensor {
	var out []model.NamedTensor
	for i, b := range o.buf {
		if b != nil {
			out = append(out, model.NamedTensor{Name: model.OptimizerPrefix + "momentum." + o.params[i].Name, Tensor: b})
		}
	}
	return out
}

// Restore loads momentum buffers saved by State from a checkpoint's
// tensors, onto each parameter's device; parameters without a saved buffer
// start without momentum.
func (o *SGD) Restore(tensors map[string]*ts.Tensor) error {
	for i, p := range o.params {
		t, ok := tensors[model.OptimizerPrefix+"momentum."+p.Name]
		if !ok {
			o.setBuf(i, nil)
			continue
		}
		if a, b := t.MustSize(), p.Tensor.MustSize(); !slices.Equal(a, b) {
			return fmt.Errorf("momentum buffer of %s has shape %v, parameter %v", p.Name, a, b)
		}
		o.setBuf(i, t.MustTo(p.Tensor.MustDevice(), false))
	}
	return nil
}

// ZeroBuffers gives the parameters whose State names are listed a momentum
// buffer of zeros (and the others none), so that a broadcast can fill them:
// the other ranks of a data-parallel run take rank 0's momentum this way.
func (o *SGD) ZeroBuffers(names []string) error {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	for i, p := range o.params {
		name := model.OptimizerPrefix + "momentum." + p.Name
		if want[name] {
			o.setBuf(i, p.Tensor.MustZerosLike(false))
			delete(want, name)
		} else {
			o.setBuf(i, nil)
		}
	}
	if len(want) > 0 {
		var extra []string
		for n := range want {
			extra = append(extra, n)
		}
		return fmt.Errorf("momentum buffers for parameters this model does not train: %v", extra)
	}
	return nil
}

// Close frees the momentum buffers: whoever made the SGD closes it when
// done with it (Trainer.Run closes its own as it returns; checkpoints keep
// the momentum). A closed SGD steps on without momentum, as a new one
// would; Close is safe to call twice.
func (o *SGD) Close() {
	for i := range o.buf {
		o.setBuf(i, nil)
	}
}

// setBuf makes t (nil: none) parameter i's momentum buffer, freeing the
// buffer it replaces.
func (o *SGD) setBuf(i int, t *ts.Tensor) {
	if o.buf[i] != nil && o.buf[i] != t {
		o.buf[i].MustDrop()
	}
	o.buf[i] = t
}
