package model

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/handnet/handnet/handnet/runtime/native"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/nn"
	"github.com/sugarme/gotch/ts"
)

// Dropout says where the study's CNN drops activations, and with which
// probability (0: no dropout there).
type Dropout struct {
	Conv    float64 `json:"conv"`    // after conv1 and conv2 (after their pooling)
	Flatten float64 `json:"flatten"` // after the flatten, before fc1
	FC1     float64 `json:"fc1"`     // after fc1's ReLU
}

// DropoutPresets are the study's four dropout experiments. The study's
// final model is "flat0.4-fc1-0.4".
var DropoutPresets = map[string]Dropout{
	"none":            {},
	"fc1-0.4":         {FC1: 0.4},               // experiment 1
	"flat0.4-fc1-0.4": {Flatten: 0.4, FC1: 0.4}, // experiment 2, the final model
	"fc1-0.5":         {FC1: 0.5},               // experiment 3
	"conv0.2-fc1-0.5": {Conv: 0.2, FC1: 0.5},    // experiment 4
}

// StudyDropouts lists the study's four dropout experiments in its order.
var StudyDropouts = []string{"fc1-0.4", "flat0.4-fc1-0.4", "fc1-0.5", "conv0.2-fc1-0.5"}

// FinalDropout is the placement of the study's final model.
const FinalDropout = "flat0.4-fc1-0.4"

// ParseDropout reads a preset name.
func ParseDropout(name string) (Dropout, error) {
	d, ok := DropoutPresets[name]
	if !ok {
		names := make([]string, 0, len(DropoutPresets))
		for n := range DropoutPresets {
			names = append(names, n)
		}
		sort.Strings(names)
		return Dropout{}, fmt.Errorf("dropout %q: want one of %s", name, strings.Join(names, ", "))
	}
	return d, nil
}

// CNN is the study's seed network, layer for layer:
//
//	conv 3→16 5×5, ReLU, max-pool 2
//	conv 16→32 5×5, ReLU, max-pool 2
//	conv 32→64 5×5, ReLU, max-pool 2
//	flatten (64·12·17 = 13,056 features at 128×170)
//	fc 256, ReLU
//	fc classes
//
// It returns logits. The study applied a softmax before CrossEntropyLoss,
// which applies log-softmax itself (a double softmax that flattens the
// gradients); handnet trains on the logits instead.
//
// Parameter names follow the PyTorch module (conv1.weight … fc2.bias; with
// BatchNorm also bn1 … bn3), so weights trained in Python load here.
type CNN struct {
	conv1, conv2, conv3 *nn.Conv2D
	bn1, bn2, bn3       *nn.BatchNorm // nil without BatchNorm
	fc1, fc2            *dense
	drop                Dropout
}

// Features is the flattened size after the convolutions for an H×W input.
func Features(h, w int) int64 {
	for range 3 {
		h, w = (h-4)/2, (w-4)/2
	}
	return int64(64 * h * w)
}

// NewCNN builds the study's CNN under p for h×w inputs and n classes,
// optionally with BatchNorm after each convolution.
func NewCNN(p *nn.Path, h, w, classes int, drop Dropout, batchNorm bool) *CNN {
	m := &CNN{drop: drop}
	cfg := nn.DefaultConv2DConfig()
	// Build each layer right after Sub (gotch's Path.Sub shares its slice).
	m.conv1 = nn.NewConv2D(p.Sub("conv1"), 3, 16, 5, cfg)
	m.conv2 = nn.NewConv2D(p.Sub("conv2"), 16, 32, 5, cfg)
	m.conv3 = nn.NewConv2D(p.Sub("conv3"), 32, 64, 5, cfg)
	if batchNorm {
		m.bn1 = newBatchNorm(p.Sub("bn1"), 16)
		m.bn2 = newBatchNorm(p.Sub("bn2"), 32)
		m.bn3 = newBatchNorm(p.Sub("bn3"), 64)
	}
	m.fc1 = newDense(p.Sub("fc1"), Features(h, w), 256)
	m.fc2 = newDense(p.Sub("fc2"), 256, int64(classes))
	return m
}

// newBatchNorm is gotch's BatchNorm with PyTorch's initial weight of 1.
func newBatchNorm(p *nn.Path, n int64) *nn.BatchNorm {
	cfg := nn.DefaultBatchNormConfig()
	cfg.WsInit = nn.NewConstInit(1)
	return nn.BatchNorm2D(p, n, cfg)
}

// release frees the tensors the layers hold besides the VarStore's
// (gotch's Linear keeps a transposed view of its weight).
func (m *CNN) release() {
	m.fc1.Ws.MustDrop()
	m.fc2.Ws.MustDrop()
}

// Features runs the three convolutional blocks: the last block's
// activations, [N,64,12,17] at 128×170, where Grad-CAM looks. Intermediates
// belong to s.
func (m *CNN) Features(s *torch.Scope, x *ts.Tensor, train bool) *ts.Tensor {
	h := m.block(s, x, m.conv1, m.bn1, train, m.drop.Conv)
	h = m.block(s, h, m.conv2, m.bn2, train, m.drop.Conv)
	return m.block(s, h, m.conv3, m.bn3, train, 0)
}

// Head turns the last block's activations into logits: flatten, [dropout],
// fc1, ReLU, [dropout], fc2.
func (m *CNN) Head(s *torch.Scope, a *ts.Tensor, train bool) *ts.Tensor {
	var h *ts.Tensor
	if fc1AsConv(a) {
		// The same numbers as below but for float rounding: the dropout
		// mask is drawn over the same elements in the same order (a is
		// made NCHW-contiguous, the flattened order), and fc1 is the
		// convolution whose kernel covers the whole feature map.
		if !a.MustIsContiguous() { // channels last: into the flattened order
			a = s.T(a.MustContiguous(false))
		}
		a = dropout(s, a, m.drop.Flatten, train)
		w := m.fc1.W // [out, in], contiguous
		sz := a.MustSize()
		w4 := s.T(w.MustView([]int64{w.MustSize()[0], sz[1], sz[2], sz[3]}, false))
		y := s.T(ts.MustConv2d(a, w4, m.fc1.Bs, []int64{1, 1}, []int64{0, 0}, []int64{1, 1}, 1))
		h = s.T(y.MustFlatten(1, -1, false))
	} else {
		h = s.T(a.MustFlatten(1, -1, false))
		h = dropout(s, h, m.drop.Flatten, train)
		h = linear(s, m.fc1, h)
	}
	h = s.T(h.MustRelu(false))
	h = dropout(s, h, m.drop.FC1, train)
	return linear(s, m.fc2, h)
}

// fc1ConvBatch is the smallest batch whose fc1 runs as a convolution
// (fc1AsConv).
const fc1ConvBatch = 6

// fc1AsConv says whether fc1 runs as a convolution for activations a: on
// the CPU in fp32, from batch fc1ConvBatch up. libtorch's linear calls the
// BLAS it is linked with — Debian's is the reference BLAS, one thread,
// no vector kernels — while the convolution runs in oneDNN: at batch 16,
// fc1's forward and backward take about a third of the time. Below, fc1
// runs native.Linear's oneDNN inner product, faster there than either
// (README, "Speed").
func fc1AsConv(a *ts.Tensor) bool {
	return a.DType() == gotch.Float && a.MustSize()[0] >= fc1ConvBatch && !a.MustDevice().IsCuda()
}

// block is conv → [BatchNorm] → ReLU → max-pool 2 → [dropout].
func (m *CNN) block(s *torch.Scope, x *ts.Tensor, c *nn.Conv2D, bn *nn.BatchNorm, train bool, p float64) *ts.Tensor {
	h := convolve(s, c, x)
	if bn != nil {
		h = s.T(bn.ForwardT(h, train))
	}
	h = s.T(h.MustRelu(false))
	h = pool(s, h, 2, 2, 0)
	return dropout(s, h, p, train)
}

// pool is max_pool2d(x, k, st, pad) through native.MaxPool2d: libtorch's
// values and gradients, an NCHW x in libtorch's channels-last kernel (its
// NCHW one is scalar: the CNN's three pools at batch 16 29 → 11 ms).
func pool(s *torch.Scope, x *ts.Tensor, k, st, pad int64) *ts.Tensor {
	return s.T(must(native.MaxPool2d(x, [2]int64{k, k}, [2]int64{st, st}, [2]int64{pad, pad})))
}

// convolve is c's convolution of x (gotch's Conv2D.Forward) through
// native.Conv2d: libtorch's conv2d, but in oneDNN where libtorch 1.13 would
// use the BLAS (ResNet-18's layer4 at batch 1: ten times faster there).
func convolve(s *torch.Scope, c *nn.Conv2D, x *ts.Tensor) *ts.Tensor {
	cfg := c.Config
	y, err := native.Conv2d(x, c.Ws, c.Bs, [2]int64(cfg.Stride), [2]int64(cfg.Padding), [2]int64(cfg.Dilation), cfg.Groups)
	if err != nil {
		panic(err)
	}
	return s.T(y)
}

// dropout applies dropout with probability p in training.
func dropout(s *torch.Scope, x *ts.Tensor, p float64, train bool) *ts.Tensor {
	if p == 0 || !train {
		return x
	}
	return s.T(ts.MustDropout(x, p, true))
}

// dense is a fully connected layer: gotch's Linear for its parameters
// (created and initialised as gotch does), run with W, the VarStore's own
// weight tensor [out, in]. gotch's Linear computes with Ws, a transposed
// view of W made once when the layer is built; once SGD has updated W in
// place, autograd can differentiate through that old view only as an
// as_strided view (AsStridedBackward0): every backward pass then fills a
// buffer of the weight's size with zeros and copies the gradient into it
// — for the study CNN's fc1 (13 MB) about 5 ms a step, a tenth of a
// batch-1 training step, which PyTorch's nn.Linear never pays.
type dense struct {
	*nn.Linear
	W *ts.Tensor // the weight, a leaf of the VarStore's: not to be freed
}

func newDense(p *nn.Path, in, out int64) *dense {
	l := nn.NewLinear(p, in, out, nn.DefaultLinearConfig())
	name := strings.Join(append(slices.Clone(p.Paths()), "weight"), nn.SEP)
	w, err := p.Get(name)
	if err != nil {
		panic(fmt.Sprintf("model: the weight of %s: %v", name, err))
	}
	return &dense{Linear: l, W: w}
}

// linear is x·Wᵀ + b as one op, as PyTorch's nn.Linear computes it
// (at::linear, an addmm), through native.Linear: in oneDNN where libtorch
// would run a large fp32 layer in the reference BLAS (fc1 at small
// batches). gotch's Linear.Forward multiplies and then adds the bias
// separately: more kernels, and under autocast the separate add promotes
// the bf16 product back to float32.
func linear(s *torch.Scope, l *dense, x *ts.Tensor) *ts.Tensor {
	return s.T(must(native.Linear(x, l.W, l.Bs)))
}
