package model

import (
	"errors"
	"fmt"

	"github.com/handnet/handnet/handnet/runtime/native"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/nn"
	"github.com/sugarme/gotch/ts"
)

// Inference is a model's inference form: what predict, eval and serve run.
// It is made once from a trained Model (NewInference) and does not follow
// the model if that trains further. Compared with the model's eval-mode
// Forward:
//
//   - every BatchNorm is folded into the convolution before it
//     (W·γ/√(σ²+ε) and β − μ·γ/√(σ²+ε)): one kernel instead of two;
//   - dropout is gone (it does nothing in evaluation anyway);
//   - on the CPU each convolution's weights are prepacked once for oneDNN
//     (libtorch's mkldnn_prepacked ops) in the layout its kernels want for
//     channels-last inputs, with the ReLU that follows fused into it; on
//     CUDA the folded weights are laid out channels last once;
//   - on the CPU in fp32 the CNN's fc1 runs as one more such convolution
//     (the BLAS libtorch may be built with is far slower), and max-pooling
//     skips the indices libtorch's kernel computes (native.MaxPool2d);
//   - in bf16 on the CPU, each convolution runs on oneDNN's bf16 kernels or
//     on its fp32 kernels with the bf16 weights (input cast up, output
//     rounded to bf16) as native.BF16ConvMode says (by default fp32
//     kernels unless the CPU has AMX-BF16; the same numbers but for the
//     order of fp32 sums);
//   - inputs run channels last (cast and laid out in one copy), in bf16
//     the weights are cast once instead of at every call as autocast does,
//     and each activation is freed as soon as it is used;
//   - Forward runs under c10::InferenceMode.
//
// The logits equal Forward's within float rounding (tests: 1e-5 in fp32).
// Grad-CAM and training need the unfolded model and its gradients.
type Inference struct {
	Config    Config
	device    gotch.Device
	precision Precision
	dtype     gotch.DType
	net       inferenceNet
	owned     []*ts.Tensor
	packed    []*native.Conv
	fp32Convs int // convolutions of a bf16 form that run on fp32 kernels
	opts      inferenceOptions
}

// inferenceOptions says how CPU convolutions run (the tests compare the
// choices).
type inferenceOptions struct {
	prepack bool // prepack CPU convolutions (until libtorch says it cannot)
	// packCL prepacks for channels-last inputs, which Forward makes; else
	// the packed layout is the one for NCHW inputs, and every call
	// reorders the weights into the channels-last one (≈ 25 % of a
	// ResNet-18's time at batch 16).
	packCL bool
	fcConv bool // the CNN's fc1 as a convolution on the CPU
	pool   bool // max-pool with native.MaxPool2d (no indices)
}

var defaultInferenceOptions = inferenceOptions{prepack: true, packCL: true, fcConv: true, pool: true}

// maxPool is max_pool2d (k×k, stride st, padding pad) of x.
func maxPool(s *torch.Scope, x *ts.Tensor, fast bool, k, st, pad int64) *ts.Tensor {
	if fast {
		return pool(s, x, k, st, pad)
	}
	return s.T(x.MustMaxPool2d([]int64{k, k}, []int64{st, st}, []int64{pad, pad}, []int64{1, 1}, false, false))
}

type inferenceNet interface {
	forward(s *torch.Scope, x *ts.Tensor) *ts.Tensor
}

// bnEps is the ε of every BatchNorm here (gotch's DefaultBatchNormConfig,
// as PyTorch's).
const bnEps = 1e-5

// NewInference makes the inference form of m in m's precision. Call it on
// the torch thread of m.
func NewInference(m *Model) (inf *Inference, err error) {
	return newInference(m, defaultInferenceOptions)
}

func newInference(m *Model, o inferenceOptions) (inf *Inference, err error) {
	inf = &Inference{Config: m.Config, device: m.VS.Device(), precision: m.Precision(), dtype: gotch.Float, opts: o}
	if inf.precision != FP32 {
		inf.dtype = inf.precision.dtype()
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("model: inference form: %v", r)
		}
		if err != nil {
			inf.Close()
			inf = nil
		}
	}()
	err = torch.NoGrad(func() error {
		switch n := m.Net.(type) {
		case *CNN:
			return inf.buildCNN(n)
		case *ResNet18:
			return inf.buildResNet(n)
		}
		return fmt.Errorf("model: no inference form for %T", m.Net)
	})
	return inf, err
}

// Forward returns the logits (float32) of x, a batch [N,3,H,W] on the
// model's device. Intermediates are freed; the returned tensor is the
// caller's.
func (inf *Inference) Forward(x *ts.Tensor) (*ts.Tensor, error) { return inf.run(x, false) }

// Probs returns the class probabilities (float32, softmax of the logits)
// of x, as Forward its logits, in the same pass under inference mode.
func (inf *Inference) Probs(x *ts.Tensor) (*ts.Tensor, error) { return inf.run(x, true) }

func (inf *Inference) run(x *ts.Tensor, probs bool) (out *ts.Tensor, err error) {
	if inf.net == nil {
		return nil, errors.New("model: inference form closed")
	}
	err = native.InferenceMode(func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("model: inference: %v", r)
			}
		}()
		s := torch.NewScope()
		defer s.Close()
		h := x
		if h.Dim() == 4 && (h.DType() != inf.dtype || !native.IsChannelsLast(h)) {
			// Cast and lay out in one copy.
			cl, err := native.ChannelsLastAs(h, inf.dtype)
			if err != nil {
				return err
			}
			h = s.T(cl)
		} else if h.DType() != inf.dtype {
			h = s.T(h.MustTotype(inf.dtype, false))
		}
		y := inf.net.forward(s, h)
		switch {
		case probs:
			y = s.T(y.MustSoftmax(-1, gotch.Float, false))
		case y.DType() != gotch.Float:
			y = s.T(y.MustTotype(gotch.Float, false))
		}
		out = s.Keep(y)
		return nil
	})
	return out, err
}

// Close frees the folded and prepacked weights; safe to call twice.
func (inf *Inference) Close() {
	if inf == nil {
		return
	}
	for _, t := range inf.owned {
		t.MustDrop()
	}
	for _, c := range inf.packed {
		c.Close()
	}
	inf.owned, inf.packed, inf.net = nil, nil, nil
}

// keep takes ownership of t.
func (inf *Inference) keep(t *ts.Tensor) *ts.Tensor {
	inf.owned = append(inf.owned, t)
	return t
}

// convUnit is a convolution with its BatchNorm folded in and an optional
// ReLU after it: prepacked (ReLU fused) on the CPU, eager elsewhere.
type convUnit struct {
	w, b            *ts.Tensor
	stride, padding [2]int64
	relu            bool
	packed          *native.Conv
	// fp32 says the convolution of a bf16 form runs on fp32 kernels with
	// the bf16 weights: bf16 inputs are cast up for it and its output
	// rounded back to bf16 (see native.BF16Conv).
	fp32 bool
}

func (u *convUnit) run(s *torch.Scope, x *ts.Tensor) *ts.Tensor {
	if u.fp32 {
		x = s.T(must(native.ChannelsLastAs(x, gotch.Float)))
	}
	var h *ts.Tensor
	if u.packed != nil {
		h = s.T(must(u.packed.Run(x)))
	} else {
		h = s.T(ts.MustConv2d(x, u.w, u.b, u.stride[:], u.padding[:], []int64{1, 1}, 1))
		if u.relu {
			h.MustRelu_()
		}
	}
	if u.fp32 {
		h = s.T(must(native.ChannelsLastAs(h, gotch.BFloat16)))
	}
	return h
}

// conv folds bn (may be nil) into conv and prepares the unit for inputs of
// [1, C, h, w].
func (inf *Inference) conv(conv *nn.Conv2D, bn *nn.BatchNorm, relu bool, h, w int64) (*convUnit, error) {
	cfg := conv.Config
	if cfg.Groups > 1 || (len(cfg.Dilation) == 2 && (cfg.Dilation[0] != 1 || cfg.Dilation[1] != 1)) {
		return nil, errors.New("model: inference form: grouped or dilated convolutions are not supported")
	}
	u := &convUnit{stride: [2]int64{cfg.Stride[0], cfg.Stride[1]}, padding: [2]int64{cfg.Padding[0], cfg.Padding[1]}, relu: relu}
	wt, bt := conv.Ws.MustShallowClone(), (*ts.Tensor)(nil)
	if conv.Bs != nil && conv.Bs.MustDefined() {
		bt = conv.Bs.MustShallowClone()
	}
	if bn != nil {
		// scale = γ/√(σ²+ε); W' = W·scale (per output channel); b' = β − μ·scale (+ b·scale)
		std := bn.RunningVar.MustAddScalar(ts.FloatScalar(bnEps), false).MustSqrt(true)
		scale := bn.Ws.MustDiv(std, false)
		std.MustDrop()
		out := scale.MustSize()[0]
		col := scale.MustView([]int64{out, 1, 1, 1}, false)
		w2 := wt.MustMul(col, true)
		col.MustDrop()
		shift := bn.RunningMean.MustMul(scale, false)
		foldedBias := bn.Bs.MustSub(shift, false)
		shift.MustDrop()
		if bt != nil {
			bs := bt.MustMul(scale, true)
			foldedBias = foldedBias.MustAdd(bs, true)
			bs.MustDrop()
		}
		scale.MustDrop()
		wt, bt = w2, foldedBias
	}
	if inf.dtype != gotch.Float {
		wt = wt.MustTotype(inf.dtype, true)
		if bt != nil {
			bt = bt.MustTotype(inf.dtype, true)
		}
		if inf.dtype == gotch.BFloat16 && !inf.device.IsCuda() && native.BF16ConvFP32() {
			// oneDNN's fp32 kernel on the bf16 weights (native.BF16Conv).
			u.fp32 = true
			inf.fp32Convs++
			wt = wt.MustTotype(gotch.Float, true)
			if bt != nil {
				bt = bt.MustTotype(gotch.Float, true)
			}
		}
	}
	return inf.unit(u, wt, bt, h, w)
}

// unit makes u run weight wt and bias bt (may be nil), which it takes
// ownership of, for inputs of [1, C, h, w].
func (inf *Inference) unit(u *convUnit, wt, bt *ts.Tensor, h, w int64) (*convUnit, error) {
	relu := u.relu
	wt = wt.MustContiguous(true)
	if bt != nil {
		bt = bt.MustContiguous(true)
	}
	if !inf.device.IsCuda() && inf.opts.prepack {
		// Prepacked for a batch of 1: at larger batches oneDNN picks
		// kernels that want the same packed layout (checked with
		// DNNL_VERBOSE for both models, fp32 and bf16, batches 1 and 16:
		// no reorder at run time).
		in := wt.MustSize()[1]
		p, err := native.PrepackConv(wt, bt, u.stride, u.padding, [2]int64{1, 1}, 1, [4]int64{1, in, h, w}, relu, inf.opts.packCL)
		if err == nil {
			// The prepacked copy is all the unit needs: the folded weights
			// are dropped (a ResNet-18 serves with one extra copy of its
			// weights, not two).
			wt.MustDrop()
			if bt != nil {
				bt.MustDrop()
			}
			inf.packed = append(inf.packed, p)
			u.packed = p
			return u, nil
		}
		// A libtorch without oneDNN's prepacked ops: the folded weights run
		// through the ordinary convolution, for every unit.
		inf.opts.prepack = false
	}
	u.w = inf.keep(wt)
	if bt != nil {
		u.b = inf.keep(bt)
	}
	if err := native.SetChannelsLast(u.w, true); err != nil {
		return nil, err
	}
	return u, nil
}

// must returns t, or panics with err (caught where the form is built or
// run).
func must(t *ts.Tensor, err error) *ts.Tensor {
	if err != nil {
		panic(err)
	}
	return t
}

// linearUnit is x·Wᵀ + b with W [out,in] stored contiguous in the
// inference dtype.
type linearUnit struct{ w, b *ts.Tensor }

func (inf *Inference) linear(l *dense) *linearUnit {
	w := l.W.MustTotype(inf.dtype, false).MustContiguous(true)
	b := l.Bs.MustTotype(inf.dtype, false)
	return &linearUnit{w: inf.keep(w), b: inf.keep(b)}
}

func (u *linearUnit) run(s *torch.Scope, x *ts.Tensor) *ts.Tensor {
	return s.T(ts.MustLinear(x, u.w, u.b))
}

// convOut is a convolution's output side for input side n.
func convOut(n, k, stride, pad int64) int64 { return (n+2*pad-k)/stride + 1 }

type cnnInference struct {
	convs    [3]*convUnit
	fc1, fc2 *linearUnit
	fc1conv  *convUnit // fc1+ReLU on the CPU, instead of fc1
	pool     bool      // native max-pool
}

func (inf *Inference) buildCNN(m *CNN) error {
	n := &cnnInference{pool: inf.opts.pool}
	h, w := int64(inf.Config.Height), int64(inf.Config.Width)
	for i, c := range []struct {
		conv *nn.Conv2D
		bn   *nn.BatchNorm
	}{{m.conv1, m.bn1}, {m.conv2, m.bn2}, {m.conv3, m.bn3}} {
		u, err := inf.conv(c.conv, c.bn, true, h, w)
		if err != nil {
			return err
		}
		n.convs[i] = u
		h, w = convOut(h, 5, 1, 0)/2, convOut(w, 5, 1, 0)/2
	}
	n.fc2 = inf.linear(m.fc2)
	c := m.conv3.Ws.MustSize()[0]
	if inf.device.IsCuda() || !inf.opts.fcConv || inf.dtype != gotch.Float || m.fc1.W.MustSize()[1] != c*h*w {
		n.fc1 = inf.linear(m.fc1)
		inf.net = n
		return nil
	}
	// On the CPU in fp32, fc1 runs as a convolution whose kernel covers
	// the whole last feature map [64, h, w]: the same sums over the same
	// weights (fc1's [256, 64·h·w] is the kernel [256, 64, h, w] in NCHW
	// order), through oneDNN with the ReLU fused, where an fp32 linear
	// layer goes to the BLAS libtorch was built with (Debian's: the
	// reference BLAS, one thread: 37 ms against 2.3 ms at batch 16). No
	// flatten copy either. A bf16 linear layer already runs on oneDNN's
	// matrix product, as fast (at batch 16, faster) as the convolution.
	wt := m.fc1.W.MustTotype(inf.dtype, false).MustContiguous(true)
	out := wt.MustSize()[0]
	wt = wt.MustView([]int64{out, c, h, w}, true)
	bt := m.fc1.Bs.MustTotype(inf.dtype, false)
	var err error
	if n.fc1conv, err = inf.unit(&convUnit{stride: [2]int64{1, 1}, relu: true}, wt, bt, h, w); err != nil {
		return err
	}
	inf.net = n
	return nil
}

// forward is the study's CNN without dropout: (conv+ReLU, max-pool 2) ×3,
// flatten (in NCHW order, whatever the layout), fc1+ReLU, fc2.
//
// Each activation is freed as soon as the next one is made (free, see
// below), as PyTorch's reference counting does.
func (n *cnnInference) forward(s *torch.Scope, x *ts.Tensor) *ts.Tensor {
	h := x
	for _, u := range n.convs {
		c := free(s, h, u.run(s, h))
		h = free(s, c, maxPool(s, c, n.pool, 2, 2, 0))
	}
	if n.fc1conv != nil {
		c := free(s, h, n.fc1conv.run(s, h))
		h = free(s, c, s.T(c.MustFlatten(1, -1, false))) // [N, 256, 1, 1]: a view
		return n.fc2.run(s, h)
	}
	h = s.T(h.MustFlatten(1, -1, false))
	h = n.fc1.run(s, h)
	h.MustRelu_()
	return n.fc2.run(s, h)
}

// free frees used (unless it is not s's: the caller's input) and returns
// next, made from it. Freeing each activation once it is used, instead of
// all at the end of the pass, lets the allocator give its memory to the
// next ones: at batch 16 a pass otherwise holds all of them at once (a
// ResNet-18 in fp32: over 60 MB), which glibc hands back to the system
// at the end and takes again, page by page, in the next pass (5,500 page
// faults a pass, ≈ 5 % of its time).
func free(s *torch.Scope, used, next *ts.Tensor) *ts.Tensor {
	s.Free(used)
	return next
}

type resnetInference struct {
	stem   *convUnit
	blocks []resnetBlock
	fc     *linearUnit
	pool   bool // native max-pool
}

type resnetBlock struct {
	conv1, conv2, down *convUnit
}

func (inf *Inference) buildResNet(m *ResNet18) error {
	n := &resnetInference{pool: inf.opts.pool}
	h, w := int64(inf.Config.Height), int64(inf.Config.Width)
	var err error
	if n.stem, err = inf.conv(m.conv1, m.bn1, true, h, w); err != nil {
		return err
	}
	h, w = convOut(h, 7, 2, 3), convOut(w, 7, 2, 3)
	h, w = convOut(h, 3, 2, 1), convOut(w, 3, 2, 1) // max-pool
	for l := range m.layers {
		for _, b := range m.layers[l] {
			var blk resnetBlock
			if blk.conv1, err = inf.conv(b.conv1, b.bn1, true, h, w); err != nil {
				return err
			}
			if b.downConv != nil {
				if blk.down, err = inf.conv(b.downConv, b.downBN, false, h, w); err != nil {
					return err
				}
			}
			st := b.conv1.Config.Stride[0]
			h, w = convOut(h, 3, st, 1), convOut(w, 3, st, 1)
			if blk.conv2, err = inf.conv(b.conv2, b.bn2, false, h, w); err != nil {
				return err
			}
			n.blocks = append(n.blocks, blk)
		}
	}
	n.fc = inf.linear(m.fc)
	inf.net = n
	return nil
}

// forward is torchvision's ResNet-18 with every BatchNorm folded: stem
// (conv+ReLU, max-pool), eight BasicBlocks (conv+ReLU, conv, + identity or
// the folded downsample, ReLU), average pool, fc.
// Each activation is freed once used (see free).
func (n *resnetInference) forward(s *torch.Scope, x *ts.Tensor) *ts.Tensor {
	h := free(s, x, n.stem.run(s, x))
	h = free(s, h, maxPool(s, h, n.pool, 3, 2, 1))
	for _, b := range n.blocks {
		a := b.conv1.run(s, h)
		out := free(s, a, b.conv2.run(s, a))
		identity := h
		if b.down != nil {
			identity = b.down.run(s, h)
		}
		out.MustAdd_(identity)
		out.MustRelu_()
		s.Free(identity)
		h = free(s, h, out)
	}
	pooled := free(s, h, s.T(h.MustAdaptiveAvgPool2d([]int64{1, 1}, false)))
	pooled = free(s, pooled, s.T(pooled.MustFlatten(1, -1, false)))
	return n.fc.run(s, pooled)
}
