package model

import (
	"strings"

	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/sugarme/gotch/nn"
	"github.com/sugarme/gotch/ts"
)

// ResNet18 is torchvision's resnet18 with a new head of n classes, with
// torchvision's parameter names (conv1.weight, layer1.0.bn1.running_mean,
// layer2.0.downsample.0.weight, fc.weight …), so torchvision's published
// ImageNet weights load into it.
type ResNet18 struct {
	conv1  *nn.Conv2D
	bn1    *nn.BatchNorm
	layers [4][2]*basicBlock
	fc     *dense
	// frozenBN tells whether the BatchNorm named (e.g. "layer1.0.bn1") runs
	// with its running statistics even in training (frozen layers);
	// allBNFrozen makes every BatchNorm do so.
	frozenBN    func(name string) bool
	allBNFrozen bool
}

type basicBlock struct {
	name         string
	conv1, conv2 *nn.Conv2D
	bn1, bn2     *nn.BatchNorm
	downConv     *nn.Conv2D // nil when the shapes match
	downBN       *nn.BatchNorm
}

func conv(p *nn.Path, in, out, k, stride, pad int64) *nn.Conv2D {
	cfg := nn.DefaultConv2DConfig()
	cfg.Stride, cfg.Padding, cfg.Bias = []int64{stride, stride}, []int64{pad, pad}, false
	return nn.NewConv2D(p, in, out, k, cfg)
}

// NewResNet18 builds the network under p. gotch's Path.Sub shares its
// slice, so every layer is built right after its Sub.
func NewResNet18(p *nn.Path, classes int) *ResNet18 {
	m := &ResNet18{}
	m.conv1 = conv(p.Sub("conv1"), 3, 64, 7, 2, 3)
	m.bn1 = newBatchNorm(p.Sub("bn1"), 64)
	in := int64(64)
	for l, out := range []int64{64, 128, 256, 512} {
		lp := p.Sub("layer" + string(rune('1'+l)))
		for b := range 2 {
			stride := int64(1)
			if b == 0 && l > 0 {
				stride = 2
			}
			bp := lp.Sub(string(rune('0' + b)))
			blk := &basicBlock{name: "layer" + string(rune('1'+l)) + "." + string(rune('0'+b))}
			blk.conv1 = conv(bp.Sub("conv1"), in, out, 3, stride, 1)
			blk.bn1 = newBatchNorm(bp.Sub("bn1"), out)
			blk.conv2 = conv(bp.Sub("conv2"), out, out, 3, 1, 1)
			blk.bn2 = newBatchNorm(bp.Sub("bn2"), out)
			if stride != 1 || in != out {
				dp := bp.Sub("downsample")
				blk.downConv = conv(dp.Sub("0"), in, out, 1, stride, 0)
				blk.downBN = newBatchNorm(dp.Sub("1"), out)
			}
			m.layers[l][b] = blk
			in = out
		}
	}
	m.fc = newDense(p.Sub("fc"), 512, int64(classes))
	return m
}

func (m *ResNet18) bn(s *torch.Scope, bn *nn.BatchNorm, name string, x *ts.Tensor, train bool) *ts.Tensor {
	if train && (m.allBNFrozen || m.frozenBN != nil && m.frozenBN(name)) {
		train = false
	}
	return s.T(bn.ForwardT(x, train))
}

// release frees the tensors the layers hold besides the VarStore's
// (gotch's Linear keeps a transposed view of its weight).
func (m *ResNet18) release() { m.fc.Ws.MustDrop() }

// Features runs the stem and the four stages: layer4's activations,
// [N,512,4,6] at 128×170, where Grad-CAM looks. Intermediates belong to s.
func (m *ResNet18) Features(s *torch.Scope, x *ts.Tensor, train bool) *ts.Tensor {
	h := m.bn(s, m.bn1, "bn1", convolve(s, m.conv1, x), train)
	h = s.T(h.MustRelu(false))
	h = pool(s, h, 3, 2, 1)
	for l := range m.layers {
		for _, blk := range m.layers[l] {
			h = m.block(s, blk, h, train)
		}
	}
	return h
}

// Head pools layer4's activations and applies the classifier.
func (m *ResNet18) Head(s *torch.Scope, a *ts.Tensor, train bool) *ts.Tensor {
	pooled := s.T(s.T(a.MustAdaptiveAvgPool2d([]int64{1, 1}, false)).MustFlatten(1, -1, false))
	return linear(s, m.fc, pooled)
}

// block is torchvision's BasicBlock.
func (m *ResNet18) block(s *torch.Scope, b *basicBlock, x *ts.Tensor, train bool) *ts.Tensor {
	h := m.bn(s, b.bn1, b.name+".bn1", convolve(s, b.conv1, x), train)
	h = s.T(h.MustRelu(false))
	h = m.bn(s, b.bn2, b.name+".bn2", convolve(s, b.conv2, h), train)
	identity := x
	if b.downConv != nil {
		identity = m.bn(s, b.downBN, b.name+".downsample.1", convolve(s, b.downConv, x), train)
	}
	h = s.T(h.MustAdd(identity, false))
	return s.T(h.MustRelu(false))
}

// Freeze scenarios of the study's Part 2.
const (
	FreezeFC     = "fc"     // only the new head trains
	FreezeLayer4 = "layer4" // layer4 and the head train
	FreezeNone   = "none"   // everything trains
)

// Trains tells whether parameter name trains under a freeze scenario.
func Trains(freeze, name string) bool {
	switch freeze {
	case FreezeFC:
		return strings.HasPrefix(name, "fc.")
	case FreezeLayer4:
		return strings.HasPrefix(name, "fc.") || strings.HasPrefix(name, "layer4.")
	}
	return true
}
