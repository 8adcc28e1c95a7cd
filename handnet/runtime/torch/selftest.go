package torch

import (
	"fmt"
	"math"
	"time"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/nn"
	"github.com/sugarme/gotch/ts"
)

// SelfTestResult is what SelfTest measured.
type SelfTestResult struct {
	Device    string
	FirstLoss float64
	LastLoss  float64
	Steps     int
	Elapsed   time.Duration
}

// SelfTest trains a tiny conv net (conv 3x3, ReLU, global average, linear)
// on fixed data for the given number of SGD steps on device, checking that
// every op works there and that the loss drops. Call it on a Thread.
func SelfTest(device gotch.Device, steps int) (SelfTestResult, error) {
	start := time.Now()
	res := SelfTestResult{Device: DeviceName(device), Steps: steps}
	ManualSeed(1)
	vs := nn.NewVarStore(device)
	root := vs.Root()
	conv := nn.NewConv2D(root.Sub("conv"), 1, 8, 3, nn.DefaultConv2DConfig())
	fc := nn.NewLinear(root.Sub("fc"), 8, 2, nn.DefaultLinearConfig())
	opt, err := nn.DefaultSGDConfig().Build(vs, 0.1)
	if err != nil {
		return res, err
	}
	x, y, err := selfTestData(device)
	if err != nil {
		return res, err
	}
	defer x.MustDrop()
	defer y.MustDrop()
	for i := 0; i < steps; i++ {
		h := conv.Forward(x)
		r := h.MustRelu(true)
		p := r.MustMeanDim([]int64{2, 3}, false, gotch.Float, true)
		logits := fc.Forward(p)
		p.MustDrop()
		loss := CrossEntropy(logits, y)
		logits.MustDrop()
		v := Float64s(loss)[0]
		if math.IsNaN(v) || math.IsInf(v, 0) {
			loss.MustDrop()
			return res, fmt.Errorf("self-test on %s: loss is %v at step %d", res.Device, v, i)
		}
		if i == 0 {
			res.FirstLoss = v
		}
		res.LastLoss = v
		err := opt.BackwardStep(loss)
		loss.MustDrop()
		if err != nil {
			return res, fmt.Errorf("self-test on %s: %w", res.Device, err)
		}
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

// selfTestData: 16 8x8 one-channel images, class 1 brighter than class 0.
func selfTestData(device gotch.Device) (x, y *ts.Tensor, err error) {
	const n, hw = 16, 8
	data := make([]float32, n*hw*hw)
	labels := make([]int64, n)
	for i := range n {
		labels[i] = int64(i % 2)
		for j := range hw * hw {
			data[i*hw*hw+j] = float32((i*7+j*13)%10)/10 + float32(labels[i])
		}
	}
	xc, err := ts.OfSlice(data)
	if err != nil {
		return nil, nil, err
	}
	yc, err := ts.OfSlice(labels)
	if err != nil {
		return nil, nil, err
	}
	x = xc.MustView([]int64{n, 1, hw, hw}, true).MustTo(device, true)
	y = yc.MustTo(device, true)
	return x, y, nil
}
