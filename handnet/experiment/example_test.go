package experiment_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/handnet/handnet/handnet/experiment"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/rundir"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/handnet/handnet/train"
	"github.com/handnet/handnet/vision"
)

// Training from Go is the call `handnet train` makes: a Spec (the run's
// whole description, saved as run.json), a folder, and hooks for progress.
// Here on 48 synthetic hands; point Data at your copy of 11k Hands.
func ExampleRun() {
	dir, err := os.MkdirTemp("", "handnet-train")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	data := filepath.Join(dir, "data")
	if err := vision.GenerateFake(data, vision.FakeOptions{Count: 48, Width: 340, Height: 256, PerSubject: 12}); err != nil {
		log.Fatal(err)
	}

	cfg := train.DefaultConfig() // the study's recipe: SGD, lr 0.01, momentum 0.9, ...
	cfg.Epochs, cfg.BatchSize = 2, 8
	spec := experiment.Spec{
		Data: data, CacheDir: filepath.Join(dir, "cache"),
		Split: "random", Scheme: "class8", Device: "cpu",
		Model: model.Config{Arch: "cnn", Dropout: model.FinalDropout},
		Train: cfg,
	}
	batches := 0
	hooks := experiment.Hooks{
		OnBatch: func(p train.Progress) { batches++ },
		OnEpoch: func(e train.EpochStats) { fmt.Printf("epoch %d done\n", e.Epoch) },
	}
	th := torch.NewThread(0) // the locked OS thread all torch work runs on; 0: all usable CPUs
	defer th.Close()
	run := filepath.Join(dir, "run")
	r, err := experiment.Run(context.Background(), th, spec, run, experiment.Options{Hooks: hooks})
	if err != nil {
		log.Fatal(err)
	}
	_, err = os.Stat(filepath.Join(run, rundir.BestCheckpoint))
	fmt.Println("progress reported:", batches > 0)
	fmt.Println("best checkpoint written:", err == nil)
	fmt.Println("test accuracy in [0, 1]:", r.Test.Accuracy >= 0 && r.Test.Accuracy <= 1)
	// Output:
	// epoch 1 done
	// epoch 2 done
	// progress reported: true
	// best checkpoint written: true
	// test accuracy in [0, 1]: true
}
