package bench_test

import (
	"fmt"
	"time"

	"github.com/handnet/handnet/handnet/bench"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/sugarme/gotch"
)

// Measure times the study CNN's training step at batch 4 in bf16 with
// channels last, on the CPU.
func ExampleMeasure() {
	th := torch.NewThread(0)
	defer th.Close()
	mode, err := bench.ParseMode("bf16+cl")
	if err != nil {
		fmt.Println(err)
		return
	}
	var row bench.Row
	err = th.Do(func() (err error) {
		row, err = bench.Measure(bench.Case{Model: "cnn", Batch: 4, Mode: mode, Phase: "train"},
			bench.Options{Device: gotch.CPU, Warmup: 1, Steps: 2, MinTime: time.Millisecond})
		return err
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(row.Model, row.Batch, row.Mode, row.Phase, row.Device, row.HandnetImagesPerSec > 0)
	// Output: cnn 4 bf16+cl train cpu true
}
