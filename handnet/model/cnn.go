package handnet

import (
	"fmt"
	"sort"
	"strings"

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
	fc1, fc2            *nn.Linear
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
	m.fc1 = nn.NewLinear(p.Sub("fc1"), Features(h, w), 256, nn.DefaultLinearConfig())
	m.fc2 = nn.NewLinear(p.Sub("fc2"), 256, int64(classes), nn.DefaultLinearConfig())
	return m
}

// newBatchNorm is gotch's BatchNorm with PyTorch's initial weight of 1.
func newBatchNorm(p *nn.Path, n int64) *nn.BatchNorm {
	cfg := nn.DefaultBatchNormConfig()
	cfg.WsInit = nn.NewConstInit(1)
	return nn.BatchNorm2D(p, n, cfg)
}

// ForwardT computes logits for a [N,3,H,W] batch; train enables dropout
// and batch statistics.
func (m *CNN) ForwardT(x *ts.Tensor, train bool) *ts.Tensor {
	h1 := m.block(x, m.conv1, m.bn1, train, m.drop.Conv)
	h2 := m.block(h1, m.conv2, m.bn2, train, m.drop.Conv)
	h1.MustDrop()
	h3 := m.block(h2, m.conv3, m.bn3, train, 0)
	h2.MustDrop()
	h := h3.MustFlatten(1, -1, true)
	h = dropout(h, m.drop.Flatten, train)
	f := m.fc1.Forward(h)
	h.MustDrop()
	f = f.MustRelu(true)
	f = dropout(f, m.drop.FC1, train)
	out := m.fc2.Forward(f)
	f.MustDrop()
	return out
}

// block is conv → [BatchNorm] → ReLU → max-pool 2 → [dropout]. It keeps x.
func (m *CNN) block(x *ts.Tensor, conv *nn.Conv2D, bn *nn.BatchNorm, train bool, p float64) *ts.Tensor {
	h := conv.Forward(x)
	if bn != nil {
		b := bn.ForwardT(h, train)
		h.MustDrop()
		h = b
	}
	h = h.MustRelu(true)
	h = h.MaxPool2DDefault(2, true)
	return dropout(h, p, train)
}

// dropout applies dropout with probability p in training; it consumes x.
func dropout(x *ts.Tensor, p float64, train bool) *ts.Tensor {
	if p == 0 || !train {
		return x
	}
	y := ts.MustDropout(x, p, true)
	x.MustDrop()
	return y
}
