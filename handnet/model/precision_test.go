package model

import (
	"math"
	"path/filepath"
	"testing"

	"github.com/handnet/handnet/handnet/runtime/native"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

func maxAbsDiff(a, b []float64) float64 {
	d := 0.0
	for i := range a {
		d = math.Max(d, math.Abs(a[i]-b[i]))
	}
	return d
}

// Channels last and bf16 change how a forward pass computes, not what the
// model is: the same logits (bf16 within its precision), float32 out,
// checkpoints byte for byte the same.
func TestPrecisionAndChannelsLast(t *testing.T) {
	th := torch.NewThread(2)
	defer th.Close()
	for _, cfg := range []Config{
		testConfig(),
		{Arch: "resnet18", Classes: []string{"a", "b", "c"}, Width: 64, Height: 48, Std: [3]float32{1, 1, 1}},
	} {
		t.Run(cfg.Arch, func(t *testing.T) {
			err := th.Do(func() error {
				torch.ManualSeed(3)
				m, err := New(cfg, gotch.CPU)
				if err != nil {
					return err
				}
				defer m.Close()
				x := ts.MustRandn([]int64{4, 3, 48, 64}, gotch.Float, gotch.CPU)
				defer x.MustDrop()
				forward := func() []float64 {
					y := m.Forward(x, false)
					defer y.MustDrop()
					if y.DType() != gotch.Float {
						t.Errorf("logits dtype %v, want float32", y.DType())
					}
					return y.Float64Values()
				}
				ref := forward()
				dir := t.TempDir()
				a, b := filepath.Join(dir, "a.safetensors"), filepath.Join(dir, "b.safetensors")
				if err := SaveCheckpoint(a, m, nil, nil); err != nil {
					return err
				}

				if err := m.SetChannelsLast(true); err != nil {
					return err
				}
				cl := 0
				for _, nt := range m.Named() {
					if nt.Tensor.Dim() == 4 {
						if !native.IsChannelsLast(nt.Tensor) && nt.Tensor.MustSize()[2]*nt.Tensor.MustSize()[3] > 1 {
							t.Errorf("%s not channels last", nt.Name)
						}
						cl++
					}
				}
				if cl == 0 {
					t.Error("no 4-D weights")
				}
				if d := maxAbsDiff(forward(), ref); d > 1e-4 {
					t.Errorf("channels last: logits differ by %g", d)
				}
				if err := SaveCheckpoint(b, m, nil, nil); err != nil {
					return err
				}
				ca, _, err := ReadSafetensors(a)
				if err != nil {
					return err
				}
				cb, _, err := ReadSafetensors(b)
				if err != nil {
					return err
				}
				for name, ta := range ca {
					if d := maxAbsDiff(ta.Float64Values(), cb[name].Float64Values()); d != 0 {
						t.Errorf("checkpoint %s differs under channels last by %g", name, d)
					}
				}

				if err := m.SetPrecision(BF16); err != nil {
					return err
				}
				bf := forward()
				scale := 0.0
				for _, v := range ref {
					scale = math.Max(scale, math.Abs(v))
				}
				// bf16 keeps 8 bits of mantissa: logits agree to a few percent of their range.
				if d := maxAbsDiff(bf, ref); d > 0.05*scale+0.05 || d == 0 {
					t.Errorf("bf16: logits differ by %g (range %g): want a small nonzero difference", d, scale)
				}
				if err := m.SetPrecision(FP32); err != nil {
					return err
				}
				if err := m.SetChannelsLast(false); err != nil {
					return err
				}
				if d := maxAbsDiff(forward(), ref); d > 1e-4 {
					t.Errorf("back to fp32 NCHW: differs by %g", d)
				}
				if err := m.SetPrecision(FP16); err == nil {
					t.Error("fp16 on the CPU accepted")
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestParsePrecision(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Precision
		ok   bool
	}{{"fp32", FP32, true}, {"BF16", BF16, true}, {"fp16", FP16, true}, {"", FP32, true}, {"int8", "", false}} {
		got, err := ParsePrecision(c.in)
		if got != c.want || (err == nil) != c.ok {
			t.Errorf("ParsePrecision(%q) = %q, %v", c.in, got, err)
		}
	}
}
