package experiment_test

import (
	"context"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/handnet/handnet/eval"
	"github.com/handnet/handnet/eval/report"
	"github.com/handnet/handnet/handnet/experiment"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/rundir"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/handnet/handnet/train"
	"github.com/handnet/handnet/vision"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// TestEvaluateEqualsUnfoldedModel: `handnet eval` runs the inference form
// (BatchNorm folded, prepacked, inference mode); on a trained checkpoint it
// gives the same confusion matrix and accuracy as the model it was made
// from, evaluated image by image as before.
func TestEvaluateEqualsUnfoldedModel(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	if err := vision.GenerateFake(data, vision.FakeOptions{Count: 120, Width: 340, Height: 256, PerSubject: 20}); err != nil {
		t.Fatal(err)
	}
	cfg := train.DefaultConfig()
	cfg.Epochs, cfg.BatchSize = 1, 8
	s := experiment.Spec{Data: data, CacheDir: filepath.Join(dir, "cache"), Split: "random", Scheme: "class8", Device: "cpu",
		Model: model.Config{Arch: "cnn", Dropout: model.FinalDropout, BatchNorm: true}, Train: cfg}
	th := torch.NewThread(0)
	defer th.Close()
	run := filepath.Join(dir, "run")
	if _, err := experiment.Run(context.Background(), th, s, run, experiment.Options{}); err != nil {
		t.Fatal(err)
	}
	got, err := experiment.Evaluate(th, run, "best", "test", "cpu", experiment.Hooks{})
	if err != nil {
		t.Fatal(err)
	}

	// The same split through the unfolded model's eval-mode Forward.
	rs, err := experiment.ReadSpec(run)
	if err != nil {
		t.Fatal(err)
	}
	rs.DataOnDevice = "off"
	d, err := experiment.OpenData(context.Background(), rs, filepath.Join(run, rundir.Split), experiment.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var want *report.Evaluation
	err = th.Do(func() error {
		trainL, valL, testL, err := d.Loaders(rs, gotch.CPU, vision.Shard{}, experiment.Hooks{})
		if err != nil {
			return err
		}
		defer trainL.Close()
		defer valL.Close()
		defer testL.Close()
		ck, err := model.ReadCheckpoint(filepath.Join(run, rundir.BestCheckpoint))
		if err != nil {
			return err
		}
		defer ck.Drop()
		m, err := model.LoadModel(ck, gotch.CPU)
		if err != nil {
			return err
		}
		defer m.Close()
		p, err := eval.Predict(func(x *ts.Tensor) (*ts.Tensor, error) { return m.Forward(x, false), nil }, testL)
		if err != nil {
			return err
		}
		want = report.Evaluate(p, m.Config.Classes, d.Set.Records, "test")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.Images != want.Images || got.Images == 0 {
		t.Fatalf("images: eval %d, unfolded %d", got.Images, want.Images)
	}
	if !reflect.DeepEqual(got.Confusion, want.Confusion) || got.Accuracy != want.Accuracy {
		t.Errorf("eval's confusion %v (accuracy %v) differs from the unfolded model's %v (%v)", got.Confusion, got.Accuracy, want.Confusion, want.Accuracy)
	}
	if d := got.Loss - want.Loss; d > 1e-6 || d < -1e-6 {
		t.Errorf("mean test loss: eval %.9f, unfolded model %.9f", got.Loss, want.Loss)
	}
	t.Logf("%d test images: accuracy %.4f both ways, loss %.6f (inference form) vs %.6f", got.Images, got.Accuracy, got.Loss, want.Loss)
}
