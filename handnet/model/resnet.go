package handnet

import (
	"strings"

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
	fc     *nn.Linear
	// frozenBN tells whether the BatchNorm named (e.g. "layer1.0.bn1") runs
	// with its running statistics even in training (frozen layers).
	frozenBN func(name string) bool
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
	m.fc = nn.NewLinear(p.Sub("fc"), 512, int64(classes), nn.DefaultLinearConfig())
	return m
}

func (m *ResNet18) bn(bn *nn.BatchNorm, name string, x *ts.Tensor, train bool) *ts.Tensor {
	if train && m.frozenBN != nil && m.frozenBN(name) {
		train = false
	}
	return bn.ForwardT(x, train)
}

// ForwardT computes logits for a [N,3,H,W] batch.
func (m *ResNet18) ForwardT(x *ts.Tensor, train bool) *ts.Tensor {
	h := m.conv1.Forward(x)
	h2 := m.bn(m.bn1, "bn1", h, train)
	h.MustDrop()
	h2 = h2.MustRelu(true)
	h = h2.MustMaxPool2d([]int64{3, 3}, []int64{2, 2}, []int64{1, 1}, []int64{1, 1}, false, true)
	for l := range m.layers {
		for _, blk := range m.layers[l] {
			nh := m.block(blk, h, train)
			h.MustDrop()
			h = nh
		}
	}
	pooled := h.MustAdaptiveAvgPool2d([]int64{1, 1}, true).MustFlatten(1, -1, true)
	out := m.fc.Forward(pooled)
	pooled.MustDrop()
	return out
}

// block is torchvision's BasicBlock; it keeps x.
func (m *ResNet18) block(b *basicBlock, x *ts.Tensor, train bool) *ts.Tensor {
	h := b.conv1.Forward(x)
	h2 := m.bn(b.bn1, b.name+".bn1", h, train)
	h.MustDrop()
	h2 = h2.MustRelu(true)
	h = b.conv2.Forward(h2)
	h2.MustDrop()
	h2 = m.bn(b.bn2, b.name+".bn2", h, train)
	h.MustDrop()
	identity := x
	if b.downConv != nil {
		d := b.downConv.Forward(x)
		identity = m.bn(b.downBN, b.name+".downsample.1", d, train)
		d.MustDrop()
	}
	h2.MustAdd_(identity)
	if identity != x {
		identity.MustDrop()
	}
	return h2.MustRelu(true)
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
