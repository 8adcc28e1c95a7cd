package train

import (
	"context"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handnet/handnet/handnet/runtime/torch"
)

// computeOnly is the compute-only rate of the last BenchmarkTraining run,
// for the trainer's ratio in the same run.
var computeOnly float64

// BenchmarkTraining measures the study's CNN at batch 16 on the CPU:
//
//	compute-only: train steps (forward, loss, backward, SGD) on one fixed
//	in-memory batch, no data loading at all;
//	trainer: the real Trainer and Loader over a warm cache, 10 epochs,
//	reporting its training images/s, that rate as a percentage of the
//	compute-only one, and the RSS after epochs 2 and 10.
//
// Run both in one process, so that the ratio is measured in one run:
//
//	go test -run '^$' -bench Training -benchtime 1x ./train
func BenchmarkTraining(b *testing.B) {
	th := torch.NewThread(0)
	defer th.Close()
	cfg := DefaultConfig()
	cfg.Seed = 3
	b.Run("compute-only", func(b *testing.B) {
		r := newRun(b, th, b.TempDir(), cfg)
		steps := 60
		var rate float64
		err := th.Do(func() error {
			e := r.train.Epoch(0, 0)
			batch, err := e.Next()
			e.Close()
			if err != nil {
				return err
			}
			defer batch.Drop()
			opt := NewSGD(r.model.Trainable(), cfg.LR, cfg.Momentum, 0)
			step := func() error {
				logits := r.model.Forward(batch.X, true)
				loss := torch.CrossEntropy(logits, batch.Y)
				_ = loss.Float64Values()
				if err := loss.Backward(); err != nil {
					return err
				}
				loss.MustDrop()
				logits.MustDrop()
				return opt.Step()
			}
			for range 5 { // warm-up
				if err := step(); err != nil {
					return err
				}
			}
			start := time.Now()
			for i := 0; i < b.N*steps; i++ {
				if err := step(); err != nil {
					return err
				}
			}
			rate = float64(b.N*steps*len(batch.Indices)) / time.Since(start).Seconds()
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		computeOnly = rate
		b.ReportMetric(rate, "images/s")
	})
	b.Run("trainer", func(b *testing.B) {
		// Free what compute-only left (its C tensors go with their Go wrappers).
		runtime.GC()
		runtime.GC()
		for i := 0; i < b.N; i++ {
			c := cfg
			c.Epochs = 10
			r := newRun(b, th, b.TempDir(), c)
			rss := map[int]float64{}
			r.trainer.OnEpoch = func(s EpochStats) { rss[s.Epoch] = rssMiB() }
			var h History
			if err := th.Do(func() (err error) { h, err = r.trainer.Run(context.Background(), false); return err }); err != nil {
				b.Fatal(err)
			}
			var imgs, secs float64
			for _, e := range h[1:] { // epoch 1 warms up
				imgs += e.ImagesPerSec * e.Seconds
				secs += e.Seconds
			}
			rate := imgs / secs
			b.ReportMetric(rate, "images/s")
			if computeOnly > 0 {
				b.ReportMetric(100*rate/computeOnly, "%-of-compute")
			}
			b.ReportMetric(rss[2], "MiB-rss-epoch2")
			b.ReportMetric(rss[10], "MiB-rss-epoch10")
			b.ReportMetric(100*(rss[10]-rss[2])/rss[2], "%-rss-growth")
		}
	})
}

// rssMiB reads this process's resident set size.
func rssMiB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}
