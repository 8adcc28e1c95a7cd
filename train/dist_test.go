package train

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/dist"
	"github.com/handnet/handnet/handnet/runtime/native"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/handnet/handnet/vision"
	"github.com/sugarme/gotch"
)

// stepsCase is a data-parallel training the tests run in rank processes
// (and, for comparison, in one process with the whole batch).
type stepsCase struct {
	Arch    string `json:"arch"`    // cnn or resnet18
	Dropout string `json:"dropout"` // CNN dropout preset
	Batch   int    `json:"batch"`   // per rank
	Steps   int    `json:"steps"`
	World   int    `json:"world"` // ranks sharing the steps (1: one process)
	Out     string `json:"out"`   // folder for the params of each rank
}

func (c stepsCase) modelConfig() model.Config {
	cfg := model.Config{Arch: c.Arch, Dropout: c.Dropout, Classes: vision.Classes8.Classes(), Width: vision.Width, Height: vision.Height,
		Mean: vision.Mean, Std: vision.Std}
	if c.Arch == "resnet18" {
		cfg.Dropout, cfg.Freeze, cfg.AllBNFrozen = "", model.FreezeNone, true
	}
	return cfg
}

// trainSteps trains c.Steps SGD steps (one epoch over Steps×Batch×World
// training images) as rank comm.Rank() (comm nil: one process) and saves
// the parameters to c.Out/rank-R.safetensors.
func trainSteps(t testing.TB, th *torch.Thread, c stepsCase, comm Comm) error {
	ds, cache, a := synthetic(t)
	labels := vision.Classes8.Labels(ds.Records)
	rank := 0
	var shard vision.Shard
	if comm != nil {
		rank = comm.Rank()
		shard = vision.Shard{Rank: rank, Count: comm.Size(), Pad: true}
	}
	return th.Do(func() error {
		torch.ManualSeed(1)
		m, err := model.New(c.modelConfig(), gotch.CPU)
		if err != nil {
			return err
		}
		defer m.Close()
		idx := a.Indices(vision.Train)[:c.Steps*c.Batch*c.World]
		trainL, err := vision.NewLoader(cache, idx, labels, nil, vision.LoaderOptions{BatchSize: c.Batch, Shuffle: true, Seed: 4, Device: gotch.CPU, Shard: shard})
		if err != nil {
			return err
		}
		shard.Pad = false
		valL, err := vision.NewLoader(cache, a.Indices(vision.Val)[:12], labels, nil, vision.LoaderOptions{BatchSize: 4, Device: gotch.CPU, Shard: shard})
		if err != nil {
			return err
		}
		cfg := DefaultConfig()
		cfg.Epochs, cfg.BatchSize, cfg.Seed, cfg.CheckpointEvery = 1, c.Batch, 4, 0 // the study's learning rate, 0.0025
		tr := &Trainer{Model: m, Train: trainL, Val: valL, Config: cfg, Dir: filepath.Join(c.Out, "run"), Comm: comm}
		if _, err := tr.Run(context.Background(), false); err != nil {
			return err
		}
		return model.SaveCheckpoint(filepath.Join(c.Out, fmt.Sprintf("rank-%d.safetensors", rank)), m, nil, nil)
	})
}

// rankMain is a rank process of TestDataParallel*: it joins the group the
// environment describes and trains the case in HANDNET_TRAIN_RANK_TEST.
func rankMain() int {
	var c stepsCase
	if err := json.Unmarshal([]byte(os.Getenv("HANDNET_TRAIN_RANK_TEST")), &c); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	env, ok, err := dist.FromEnv(os.Getenv)
	if err != nil || !ok {
		fmt.Fprintln(os.Stderr, "no distributed environment:", err)
		return 2
	}
	g, err := dist.Join(env, dist.Options{Device: gotch.CPU, Timeout: time.Minute})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	th := torch.NewThread(1)
	defer th.Close()
	tb := &testing.B{} // synthetic wants a testing.TB; its data exists already
	if err := trainSteps(tb, th, c, g); err != nil {
		fmt.Fprintln(os.Stderr, err)
		g.Abort(err)
		return 1
	}
	g.Close()
	return 0
}

// runRanks trains c in c.World rank processes.
func runRanks(t *testing.T, c stepsCase) { runRanksB(t, c) }

func runRanksB(t testing.TB, c stepsCase) {
	t.Helper()
	if !native.BuildFeatures().Gloo {
		t.Skip("built without gloo: " + native.BuildFeatures().Missing["gloo"])
	}
	synthetic(t) // the data and its cache, which the ranks share
	js, _ := json.Marshal(c)
	var out bytes.Buffer
	err := dist.Launch(context.Background(), dist.LaunchOptions{NProc: c.World, Program: os.Args[0], Args: []string{"-test.run=^$"},
		Stdout: &out, Stderr: &out, Env: []string{"HANDNET_TRAIN_RANK_TEST=" + string(js), "HANDNET_TEST_DATA=" + dataDir}})
	if err != nil {
		t.Fatalf("%d ranks: %v\n%s", c.World, err, out.String())
	}
}

func readParams(t *testing.T, path string) map[string][]float32 {
	t.Helper()
	tensors, _, err := model.ReadSafetensors(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]float32{}
	for name, x := range tensors {
		out[name] = x.Vals().([]float32)
		x.MustDrop()
	}
	return out
}

// maxDiff is the largest absolute difference between two parameter sets,
// and the parameter where it is.
func maxDiff(t *testing.T, a, b map[string][]float32) (float64, string) {
	t.Helper()
	if len(a) != len(b) {
		t.Fatalf("%d parameters vs %d", len(a), len(b))
	}
	worst, where := 0.0, ""
	for name, va := range a {
		vb := b[name]
		if len(va) != len(vb) {
			t.Fatalf("%s: %d values vs %d", name, len(va), len(vb))
		}
		for i := range va {
			if d := math.Abs(float64(va[i]) - float64(vb[i])); d > worst || math.IsNaN(d) {
				worst, where = d, name+"["+strconv.Itoa(i)+"]"
			}
		}
	}
	return worst, where
}

// TestDataParallelRanksStayIdentical: after the first step and after 20,
// every parameter is bit-identical on both ranks (each rank draws its own
// dropout masks; the averaged gradients are the same).
func TestDataParallelRanksStayIdentical(t *testing.T) {
	for _, steps := range []int{1, 20} {
		t.Run(fmt.Sprintf("%d steps", steps), func(t *testing.T) {
			c := stepsCase{Arch: "cnn", Dropout: model.FinalDropout, Batch: 4, Steps: steps, World: 2, Out: t.TempDir()}
			runRanks(t, c)
			p0 := readParams(t, filepath.Join(c.Out, "rank-0.safetensors"))
			p1 := readParams(t, filepath.Join(c.Out, "rank-1.safetensors"))
			if d, where := maxDiff(t, p0, p1); d != 0 {
				t.Errorf("ranks differ after %d steps: %g at %s", steps, d, where)
			}
			// And training moved them.
			th := torch.NewThread(1)
			defer th.Close()
			var init map[string][]float32
			th.Do(func() error {
				torch.ManualSeed(1)
				m, err := model.New(c.modelConfig(), gotch.CPU)
				if err != nil {
					return err
				}
				defer m.Close()
				init = map[string][]float32{}
				for _, nt := range m.Named() {
					init[nt.Name] = nt.Tensor.Vals().([]float32)
				}
				return nil
			})
			if d, _ := maxDiff(t, p0, init); d == 0 {
				t.Error("the parameters did not change")
			}
		})
	}
}

// TestDataParallelEqualsOneProcess: 2 ranks × batch 8 for 10 steps equal 1
// process × batch 16 on the same samples, within 1e-5.
func TestDataParallelEqualsOneProcess(t *testing.T) {
	for _, arch := range []string{"cnn", "resnet18"} {
		t.Run(arch, func(t *testing.T) {
			c := stepsCase{Arch: arch, Dropout: "none", Batch: 8, Steps: 10, World: 2, Out: t.TempDir()}
			runRanks(t, c)
			one := stepsCase{Arch: arch, Dropout: "none", Batch: 16, Steps: 10, World: 1, Out: t.TempDir()}
			th := torch.NewThread(0)
			defer th.Close()
			if err := trainSteps(t, th, one, nil); err != nil {
				t.Fatal(err)
			}
			p0 := readParams(t, filepath.Join(c.Out, "rank-0.safetensors"))
			p1 := readParams(t, filepath.Join(c.Out, "rank-1.safetensors"))
			single := readParams(t, filepath.Join(one.Out, "rank-0.safetensors"))
			if d, where := maxDiff(t, p0, p1); d != 0 {
				t.Errorf("ranks differ: %g at %s", d, where)
			}
			d, where := maxDiff(t, p0, single)
			t.Logf("%s: 2 ranks × 8 vs 1 × 16 after 10 steps: max |diff| %.3g at %s", arch, d, where)
			if d > 1e-5 {
				t.Errorf("max |diff| %g at %s, want <= 1e-5", d, where)
			}
			// Only rank 0 wrote the run folder: its history exists.
			if _, err := os.Stat(filepath.Join(c.Out, "run", "history.json")); err != nil {
				t.Error(err)
			}
		})
	}
}

// BenchmarkDataParallel compares, on this machine's CPUs, one process
// training the CNN at batch 16 (all threads) with two Gloo ranks at batch 8
// each (a thread each) over the same 20 steps of 16 images; it reports both
// rates and the two-rank overhead.
//
//	go test -run '^$' -bench DataParallel -benchtime 1x ./train
func BenchmarkDataParallel(b *testing.B) {
	for range b.N {
		rate := func(c stepsCase) float64 {
			h, err := ReadHistory(filepath.Join(c.Out, "run"))
			if err != nil {
				b.Fatal(err)
			}
			return h[0].ImagesPerSec
		}
		one := stepsCase{Arch: "cnn", Dropout: model.FinalDropout, Batch: 16, Steps: 20, World: 1, Out: b.TempDir()}
		th := torch.NewThread(0)
		if err := trainSteps(b, th, one, nil); err != nil {
			b.Fatal(err)
		}
		th.Close()
		two := stepsCase{Arch: "cnn", Dropout: model.FinalDropout, Batch: 8, Steps: 20, World: 2, Out: b.TempDir()}
		runRanksB(b, two)
		r1, r2 := rate(one), rate(two)
		b.ReportMetric(r1, "img/s-1proc")
		b.ReportMetric(r2, "img/s-2ranks")
		b.ReportMetric(100*(r1/r2-1), "%-overhead")
	}
}
