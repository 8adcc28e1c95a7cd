package handnet_test

import (
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/handnet/handnet/vision"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// realPhotos preprocesses the real sample photos (../shared/data) into one
// normalised batch [N,3,H,W], as predict feeds them.
func realPhotos(t *testing.T) ([]float32, int) {
	t.Helper()
	paths, _ := filepath.Glob("../../shared/data/real-sample/*.jpg")
	if len(paths) < 20 {
		t.Fatalf("the real sample photos are part of the test set-up: found %d in ../../shared/data/real-sample", len(paths))
	}
	p, err := vision.NewPreprocessor(vision.Width, vision.Height)
	if err != nil {
		t.Fatal(err)
	}
	norm := vision.NewNormalizer(vision.Mean, vision.Std)
	n := p.Size()
	x := make([]float32, len(paths)*n)
	buf := make([]byte, n)
	for i, path := range paths {
		if err := p.File(path, buf); err != nil {
			t.Fatal(err)
		}
		norm.Apply(x[i*n:(i+1)*n], buf)
	}
	return x, len(paths)
}

// TestInferenceFormEqualsModel: the inference form (BatchNorm folded,
// convolutions prepacked with ReLU fused, channels last, inference mode)
// gives the eval-mode model's logits within 1e-5 on the real sample
// photos, for the study's CNN with and without BatchNorm and for ResNet-18
// with non-trivial BatchNorm statistics; and in bf16 within the tolerance
// of bf16 itself (8 significant bits: logits within 2 % of their range,
// the same class for every photo but near-ties).
func TestInferenceFormEqualsModel(t *testing.T) {
	x, n := realPhotos(t)
	th := torch.NewThread(0)
	defer th.Close()
	base := model.Config{Classes: vision.Classes8.Classes(), Width: vision.Width, Height: vision.Height, Mean: vision.Mean, Std: vision.Std}
	cnn, cnnBN, r18 := base, base, base
	cnn.Arch, cnn.Dropout = "cnn", model.FinalDropout
	cnnBN.Arch, cnnBN.Dropout, cnnBN.BatchNorm = "cnn", "conv0.2-fc1-0.5", true
	r18.Arch = "resnet18"
	for _, tc := range []struct {
		name string
		cfg  model.Config
	}{{"cnn", cnn}, {"cnn+batchnorm", cnnBN}, {"resnet18", r18}} {
		t.Run(tc.name, func(t *testing.T) {
			err := th.Do(func() error {
				torch.ManualSeed(11)
				m, err := model.New(tc.cfg, gotch.CPU)
				if err != nil {
					return err
				}
				defer m.Close()
				randomBatchNorm(m)
				in := ts.MustOfSlice(x).MustView([]int64{int64(n), 3, vision.Height, vision.Width}, true)
				defer in.MustDrop()
				var want []float64
				if err := torch.NoGrad(func() error {
					y := m.Forward(in, false)
					want = y.Float64Values()
					y.MustDrop()
					return nil
				}); err != nil {
					return err
				}
				got, err := inferenceLogits(m, in)
				if err != nil {
					return err
				}
				diff, argmaxSame := compare(got, want, len(base.Classes))
				t.Logf("fp32: max |logits - model's| = %.3g over %d real photos", diff, n)
				if !(diff <= 1e-5) || argmaxSame < n {
					return fmt.Errorf("fp32 inference form: logits differ by up to %g (want <= 1e-5); same class for %d of %d photos", diff, argmaxSame, n)
				}

				if err := m.SetPrecision(model.BF16); err != nil {
					return err
				}
				got, err = inferenceLogits(m, in)
				if err != nil {
					return err
				}
				diff, argmaxSame = compare(got, want, len(base.Classes))
				span := spread(want)
				t.Logf("bf16: max |logits - fp32 model's| = %.3g (%.2f %% of the logits' range %.3g); same class for %d of %d photos",
					diff, 100*diff/span, span, argmaxSame, n)
				if !(diff <= 0.02*span) || argmaxSame < n-2 {
					return fmt.Errorf("bf16 inference form: logits differ by up to %g (%.2f %% of their range), same class for %d of %d photos",
						diff, 100*diff/span, argmaxSame, n)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// randomBatchNorm gives every BatchNorm layer statistics and affine
// parameters far from their initial 0/1, so that folding them matters.
func randomBatchNorm(m *model.Model) {
	_ = torch.NoGrad(func() error {
		for _, nt := range m.Named() {
			switch {
			case strings.HasSuffix(nt.Name, "running_mean"), strings.HasPrefix(nt.Name, "bn") && strings.HasSuffix(nt.Name, ".bias"),
				strings.Contains(nt.Name, ".bn") && strings.HasSuffix(nt.Name, ".bias"), strings.HasSuffix(nt.Name, "downsample.1.bias"):
				nt.Tensor.MustUniform_(-0.2, 0.2)
			case strings.HasSuffix(nt.Name, "running_var"), strings.HasPrefix(nt.Name, "bn") && strings.HasSuffix(nt.Name, ".weight"),
				strings.Contains(nt.Name, ".bn") && strings.HasSuffix(nt.Name, ".weight"), strings.HasSuffix(nt.Name, "downsample.1.weight"):
				nt.Tensor.MustUniform_(0.5, 1.5)
			}
		}
		return nil
	})
}

func inferenceLogits(m *model.Model, in *ts.Tensor) ([]float64, error) {
	inf, err := model.NewInference(m)
	if err != nil {
		return nil, err
	}
	defer inf.Close()
	y, err := inf.Forward(in)
	if err != nil {
		return nil, err
	}
	defer y.MustDrop()
	if y.DType() != gotch.Float {
		return nil, fmt.Errorf("logits dtype %v, want float32", y.DType())
	}
	return y.Float64Values(), nil
}

// compare returns the largest absolute difference and for how many rows
// (of k logits) the arg-max agrees.
func compare(a, b []float64, k int) (float64, int) {
	d, same := 0.0, 0
	for r := 0; r < len(a)/k; r++ {
		ia, ib := 0, 0
		for j := range k {
			d = math.Max(d, math.Abs(a[r*k+j]-b[r*k+j]))
			if a[r*k+j] > a[r*k+ia] {
				ia = j
			}
			if b[r*k+j] > b[r*k+ib] {
				ib = j
			}
		}
		if ia == ib {
			same++
		}
	}
	return d, same
}

func spread(v []float64) float64 {
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, x := range v {
		lo, hi = math.Min(lo, x), math.Max(hi, x)
	}
	return hi - lo
}
