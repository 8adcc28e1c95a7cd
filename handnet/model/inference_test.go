package model

import (
	"fmt"
	"os"
	"testing"

	"github.com/handnet/handnet/handnet/runtime/native"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// Every way the inference form can run its CPU layers (prepacked for
// channels-last or NCHW inputs, not prepacked as with a libtorch without
// oneDNN's prepacked ops, fc1 as a linear layer or a convolution, libtorch's
// max-pool or the native one) gives the eval-mode model's logits: within
// 1e-5 in fp32, within bf16's rounding in bf16 (on bf16 kernels, on fp32
// kernels, or as the CPU says: native.BF16Conv), NCHW or
// channels-last input, batch 1 and 5.
func TestInferenceOptionsEqualModel(t *testing.T) {
	th := torch.NewThread(2)
	defer th.Close()
	defer native.SetBF16Conv(native.BF16ConvMode())
	for _, cfg := range []Config{
		{Arch: "cnn", Dropout: FinalDropout, Classes: []string{"a", "b", "c"}, Width: 64, Height: 48, Std: [3]float32{1, 1, 1}},
		{Arch: "cnn", Dropout: "conv0.2-fc1-0.5", BatchNorm: true, Classes: []string{"a", "b", "c"}, Width: 64, Height: 48, Std: [3]float32{1, 1, 1}},
		{Arch: "resnet18", Classes: []string{"a", "b", "c"}, Width: 64, Height: 48, Std: [3]float32{1, 1, 1}},
	} {
		t.Run(fmt.Sprintf("%s-bn%v", cfg.Arch, cfg.BatchNorm), func(t *testing.T) {
			err := th.Do(func() error {
				torch.ManualSeed(5)
				m, err := New(cfg, gotch.CPU)
				if err != nil {
					return err
				}
				defer m.Close()
				for _, n := range []int64{1, 5} {
					x := ts.MustRandn([]int64{n, 3, 48, 64}, gotch.Float, gotch.CPU)
					var want []float64
					if err := torch.NoGrad(func() error {
						y := m.Forward(x, false)
						want = y.Float64Values()
						y.MustDrop()
						return nil
					}); err != nil {
						return err
					}
					for _, pk := range []struct {
						prec    Precision
						kernels native.BF16Conv
					}{{FP32, native.BF16ConvAuto}, {BF16, native.BF16ConvKernels}, {BF16, native.BF16ConvFP32Kernels}, {BF16, native.BF16ConvAuto}} {
						prec := pk.prec
						if err := m.SetPrecision(prec); err != nil {
							return err
						}
						native.SetBF16Conv(pk.kernels)
						for name, o := range map[string]inferenceOptions{
							"default":         defaultInferenceOptions,
							"nchw-packed":     {prepack: true},
							"not-prepacked":   {fcConv: true},
							"libtorch-layers": {prepack: true, packCL: true},
						} {
							inf, err := newInference(m, o)
							if err != nil {
								return err
							}
							if fp32 := prec == BF16 && native.BF16ConvFP32(); (inf.fp32Convs > 0) != fp32 {
								inf.Close()
								return fmt.Errorf("%s %s kernels %d: %d convolutions on fp32 kernels, want them %v", name, prec, pk.kernels, inf.fp32Convs, fp32)
							}
							y, err := inf.Forward(x)
							if err != nil {
								inf.Close()
								return fmt.Errorf("%s %s: %w", name, prec, err)
							}
							got := y.Float64Values()
							y.MustDrop()
							xcl, err := native.ChannelsLast(x)
							if err != nil {
								inf.Close()
								return err
							}
							y, err = inf.Forward(xcl)
							xcl.MustDrop()
							inf.Close()
							if err != nil {
								return fmt.Errorf("%s %s channels last: %w", name, prec, err)
							}
							d := max(maxAbsDiff(got, want), maxAbsDiff(y.Float64Values(), want))
							y.MustDrop()
							tol := 1e-5
							if prec == BF16 {
								tol = 0.02 * (spanOf(want) + 1e-3)
							}
							if !(d <= tol) {
								return fmt.Errorf("%s %s (bf16 kernels %d) batch %d: logits differ from the model's by %g (want <= %g)", name, prec, pk.kernels, n, d, tol)
							}
						}
					}
					if err := m.SetPrecision(FP32); err != nil {
						return err
					}
					x.MustDrop()
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

func spanOf(v []float64) float64 {
	lo, hi := v[0], v[0]
	for _, x := range v {
		lo, hi = min(lo, x), max(hi, x)
	}
	return hi - lo
}

// The inference form keeps nothing from one pass to the next: a ResNet-18
// at batch 1, 100 passes, and the resident memory grows by less than 30 MB.
// gotch's in-place ops kept every residual block's output until
// tools/setup's rewrite freed the handles they replace (freeReplacedHandles;
// runtime/torch's TestInPlaceOpsLeaveNoMemory): against a gotch copy
// without it, 49 MB over 60 passes.
func TestInferenceKeepsNoMemory(t *testing.T) {
	th := torch.NewThread(2)
	defer th.Close()
	err := th.Do(func() error {
		m, err := New(Config{Arch: "resnet18", Classes: []string{"a", "b"}, Width: 170, Height: 128, Std: [3]float32{1, 1, 1}}, gotch.CPU)
		if err != nil {
			return err
		}
		defer m.Close()
		inf, err := NewInference(m)
		if err != nil {
			return err
		}
		defer inf.Close()
		x := ts.MustRandn([]int64{1, 3, 128, 170}, gotch.Float, gotch.CPU)
		defer x.MustDrop()
		passes := func(n int) error {
			for range n {
				y, err := inf.Forward(x)
				if err != nil {
					return err
				}
				y.MustDrop()
			}
			return nil
		}
		if err := passes(5); err != nil {
			return err
		}
		before := residentBytes(t)
		if err := passes(100); err != nil {
			return err
		}
		if grew := residentBytes(t) - before; grew > 30<<20 {
			t.Errorf("resident memory grew by %d MB over 100 inference passes at batch 1: the passes keep their tensors", grew>>20)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// residentBytes is the process's resident size (/proc/self/statm).
func residentBytes(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/statm")
	var size, resident int64
	if err == nil {
		_, err = fmt.Sscan(string(b), &size, &resident)
	}
	if err != nil {
		t.Skipf("resident size: %v", err)
	}
	return resident * int64(os.Getpagesize())
}
