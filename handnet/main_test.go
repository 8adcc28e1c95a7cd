package handnet_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/handnet/handnet/handnet/experiment"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/rundir"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/handnet/handnet/train"
	"github.com/handnet/handnet/vision"
)

// TestMain trains the model the examples load (one epoch on 48 synthetic
// hands: a real checkpoint, as `handnet train` writes it) and picks one of
// its hands as the examples' photo.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "handnet-examples")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := 1
	if err := trainExampleModel(dir); err != nil {
		fmt.Fprintln(os.Stderr, "training the examples' model:", err)
	} else {
		code = m.Run()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

func trainExampleModel(dir string) error {
	data := filepath.Join(dir, "data")
	if err := vision.GenerateFake(data, vision.FakeOptions{Count: 48, Width: 340, Height: 256, PerSubject: 12}); err != nil {
		return err
	}
	cfg := train.DefaultConfig()
	cfg.Epochs, cfg.BatchSize = 1, 8
	s := experiment.Spec{Data: data, CacheDir: filepath.Join(dir, "cache"), Split: "random", Scheme: "class8", Device: "cpu",
		Model: model.Config{Arch: "cnn", Dropout: model.FinalDropout}, Train: cfg}
	th := torch.NewThread(0)
	defer th.Close()
	run := filepath.Join(dir, "run")
	if _, err := experiment.Run(context.Background(), th, s, run, experiment.Options{}); err != nil {
		return err
	}
	checkpoint = filepath.Join(run, rundir.BestCheckpoint)
	photo = filepath.Join(data, vision.ImagesDir, "Hand_0000002.jpg")
	_, err := os.Stat(photo)
	return err
}
