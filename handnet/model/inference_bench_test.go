package model

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handnet/handnet/handnet/runtime/native"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// TestInferencePathsAB compares ways of running the inference form on the
// CPU in one process, alternating and rotating their order, so that a
// shared machine's noise falls on all of them alike: "model" (the eval-mode
// model under inference mode: BatchNorm, autocast, libtorch's eager
// channels-last convolutions, as PyTorch's side of `handnet bench`),
// "form" (NewInference's) and forms with one choice changed (inferenceOptions:
// prepacked for NCHW or channels-last inputs or not prepacked, fc1 as a
// convolution, the native max-pool). It reports images/s (median and best
// of the rounds) and images per CPU-second of the torch thread, which with
// HANDNET_INFER_AB_THREADS=1 measures the work whatever the machine's load.
// It runs only with HANDNET_INFER_AB set, e.g.
//
//	HANDNET_INFER_AB=cnn,resnet18:1,16:fp32,bf16:15 HANDNET_INFER_AB_THREADS=2 \
//	  go test -count=1 -run InferencePathsAB -v ./handnet/model
//
// (models : batches : precisions : rounds; HANDNET_INFER_AB_PATHS=model,form
// picks paths, HANDNET_INFER_PROF_FAULTS=1 adds the page faults of a pass).
func TestInferencePathsAB(t *testing.T) {
	spec := os.Getenv("HANDNET_INFER_AB")
	if spec == "" {
		t.Skip("set HANDNET_INFER_AB=models:batches:precisions:reps to compare the inference paths")
	}
	f := strings.Split(spec, ":")
	for len(f) < 4 {
		f = append(f, "")
	}
	models := strings.Split(or(f[0], "cnn,resnet18"), ",")
	var batches []int64
	for _, b := range strings.Split(or(f[1], "1,16"), ",") {
		n, _ := strconv.Atoi(b)
		batches = append(batches, int64(n))
	}
	precs := strings.Split(or(f[2], "fp32,bf16"), ",")
	reps, _ := strconv.Atoi(or(f[3], "11"))
	only := os.Getenv("HANDNET_INFER_AB_PATHS")

	threads, _ := strconv.Atoi(os.Getenv("HANDNET_INFER_AB_THREADS"))
	th := torch.NewThread(threads)
	defer th.Close()
	for _, arch := range models {
		for _, prec := range precs {
			for _, n := range batches {
				err := th.Do(func() error { return abCase(t, arch, Precision(prec), n, reps, only) })
				if err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

func or(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func abCase(t *testing.T, arch string, prec Precision, n int64, reps int, only string) error {
	cfg := Config{Arch: arch, Classes: []string{"a", "b", "c", "d", "e", "f", "g", "h"}, Width: 170, Height: 128,
		Mean: [3]float32{0.485, 0.456, 0.406}, Std: [3]float32{0.229, 0.224, 0.225}}
	if arch == "cnn" {
		cfg.Dropout = FinalDropout
	}
	torch.ManualSeed(0)
	m, err := New(cfg, gotch.CPU)
	if err != nil {
		return err
	}
	defer m.Close()
	if err := m.SetChannelsLast(true); err != nil {
		return err
	}
	if err := m.SetPrecision(prec); err != nil {
		return err
	}
	x0 := ts.MustRandn([]int64{n, 3, 128, 170}, gotch.Float, gotch.CPU)
	x, err := native.ChannelsLast(x0)
	x0.MustDrop()
	if err != nil {
		return err
	}
	defer x.MustDrop()

	type path struct {
		name string
		run  func() (*ts.Tensor, error)
	}
	var paths []path
	add := func(name string, o inferenceOptions) error {
		if only != "" && !slices.Contains(strings.Split(only, ","), name) {
			return nil
		}
		inf, err := newInference(m, o)
		if err != nil {
			return err
		}
		t.Cleanup(inf.Close)
		paths = append(paths, path{name, func() (*ts.Tensor, error) { return inf.Forward(x) }})
		return nil
	}
	if only == "" || strings.Contains(only, "model") {
		paths = append(paths, path{"model", func() (out *ts.Tensor, err error) {
			err = native.InferenceMode(func() error { out = m.Forward(x, false); return nil })
			return
		}})
	}
	for _, c := range []struct {
		name string
		o    inferenceOptions
	}{
		{"form", defaultInferenceOptions}, // what NewInference makes
		{"packnchw", inferenceOptions{prepack: true}},
		{"packcl", inferenceOptions{prepack: true, packCL: true}},
		{"packcl+fcconv", inferenceOptions{prepack: true, packCL: true, fcConv: true}},
		{"packcl+pool", inferenceOptions{prepack: true, packCL: true, pool: true}},
		{"eager", inferenceOptions{}},
		{"eager+fcconv+pool", inferenceOptions{fcConv: true, pool: true}},
	} {
		if err := add(c.name, c.o); err != nil {
			return err
		}
	}
	// Warm-up, then reps rounds, each timing every path for ~k images.
	k := max(1, 32/int(n))
	ips := make([][]float64, len(paths))
	cpu := make([][]float64, len(paths)) // per CPU second of this thread: with 1 thread, the work, whatever the machine's load
	for r := -2; r < reps; r++ {
		for i0 := range paths {
			i := (i0 + r + 2) % len(paths) // rotate the order
			start, c0 := time.Now(), threadCPU()
			for range k {
				y, err := paths[i].run()
				if err != nil {
					return err
				}
				y.MustDrop()
			}
			if r >= 0 {
				ips[i] = append(ips[i], float64(k)*float64(n)/time.Since(start).Seconds())
				cpu[i] = append(cpu[i], float64(k)*float64(n)/(threadCPU()-c0).Seconds())
			}
		}
	}
	if os.Getenv("HANDNET_INFER_PROF_FAULTS") != "" {
		for _, p := range paths {
			f0 := minorFaults()
			y, err := p.run()
			if err != nil {
				return err
			}
			y.MustDrop()
			t.Logf("%s: %d page faults in a pass", p.name, minorFaults()-f0)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s batch %d:", arch, prec, n)
	for i, p := range paths {
		v, c := slices.Clone(ips[i]), slices.Clone(cpu[i])
		slices.Sort(v)
		slices.Sort(c)
		fmt.Fprintf(&b, "  %s %.1f (max %.1f; per thread-CPU-s %.1f)", p.name, v[len(v)/2], v[len(v)-1], c[len(c)/2])
	}
	t.Log(b.String())
	return nil
}

// threadCPU is the CPU time of the calling OS thread (the torch thread).
func threadCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(1 /* RUSAGE_THREAD */, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestInferenceProfile times each step of a model's inference form: the
// CNN's (HANDNET_INFER_PROF=batch:precision:threads) or ResNet-18's
// (HANDNET_INFER_PROF_R18=batch:precision:threads);
// HANDNET_INFER_PROF_FAULTS=1 adds each step's page faults in the last
// pass. Unlike Forward it keeps every activation to the end of the pass.
func TestInferenceProfile(t *testing.T) {
	type stepFunc func(name string, f func())
	for _, c := range []struct {
		env, arch  string
		dropout    string
		runs, warm int // passes, of which the first warm are not timed
		pass       func(inf *Inference, s *torch.Scope, h *ts.Tensor, step stepFunc)
	}{
		{"HANDNET_INFER_PROF", "cnn", FinalDropout, 25, 5, func(inf *Inference, s *torch.Scope, h *ts.Tensor, step stepFunc) {
			net := inf.net.(*cnnInference)
			for i, u := range net.convs {
				step(fmt.Sprintf("conv%d", i+1), func() { h = u.run(s, h) })
				step(fmt.Sprintf("pool%d", i+1), func() { h = maxPool(s, h, net.pool, 2, 2, 0) })
			}
			step("fc1", func() {
				if net.fc1conv != nil {
					h = s.T(net.fc1conv.run(s, h).MustFlatten(1, -1, false))
					return
				}
				h = net.fc1.run(s, s.T(h.MustFlatten(1, -1, false)))
				h.MustRelu_()
			})
			step("fc2", func() { h = net.fc2.run(s, h) })
		}},
		{"HANDNET_INFER_PROF_R18", "resnet18", "", 15, 3, func(inf *Inference, s *torch.Scope, h *ts.Tensor, step stepFunc) {
			net := inf.net.(*resnetInference)
			step("stem", func() { h = net.stem.run(s, h) })
			step("pool", func() { h = maxPool(s, h, net.pool, 3, 2, 1) })
			for i, b := range net.blocks {
				var out *ts.Tensor
				step(fmt.Sprintf("b%d.conv1", i), func() { out = b.conv1.run(s, h) })
				step(fmt.Sprintf("b%d.conv2", i), func() { out = b.conv2.run(s, out) })
				id := h
				if b.down != nil {
					step(fmt.Sprintf("b%d.down", i), func() { id = b.down.run(s, h) })
				}
				step(fmt.Sprintf("b%d.addrelu", i), func() { out.MustAdd_(id); out.MustRelu_() })
				h = out
			}
			step("avgpool", func() { h = s.T(s.T(h.MustAdaptiveAvgPool2d([]int64{1, 1}, false)).MustFlatten(1, -1, false)) })
			step("fc", func() { h = net.fc.run(s, h) })
		}},
	} {
		t.Run(c.arch, func(t *testing.T) {
			spec := os.Getenv(c.env)
			if spec == "" {
				t.Skipf("set %s=batch:precision:threads", c.env)
			}
			f := strings.Split(spec, ":")
			n, _ := strconv.Atoi(f[0])
			threads, _ := strconv.Atoi(f[2])
			faults := os.Getenv("HANDNET_INFER_PROF_FAULTS") != ""
			th := torch.NewThread(threads)
			defer th.Close()
			err := th.Do(func() error {
				cfg := Config{Arch: c.arch, Classes: []string{"a", "b", "c", "d", "e", "f", "g", "h"}, Width: 170, Height: 128,
					Mean: [3]float32{0.485, 0.456, 0.406}, Std: [3]float32{0.229, 0.224, 0.225}, Dropout: c.dropout}
				m, err := New(cfg, gotch.CPU)
				if err != nil {
					return err
				}
				defer m.Close()
				if err := m.SetPrecision(Precision(f[1])); err != nil {
					return err
				}
				inf, err := NewInference(m)
				if err != nil {
					return err
				}
				defer inf.Close()
				x0 := ts.MustRandn([]int64{int64(n), 3, 128, 170}, gotch.Float, gotch.CPU)
				x, _ := native.ChannelsLast(x0)
				x0.MustDrop()
				defer x.MustDrop()
				times := map[string][]float64{}
				var names []string
				return native.InferenceMode(func() error {
					for r := 0; r < c.runs; r++ {
						s := torch.NewScope()
						step := func(name string, f func()) {
							st := time.Now()
							f0 := minorFaults()
							f()
							if faults && r == c.runs-1 {
								t.Logf("%s: %d page faults", name, minorFaults()-f0)
							}
							if r >= c.warm {
								if _, ok := times[name]; !ok {
									names = append(names, name)
								}
								times[name] = append(times[name], float64(time.Since(st).Microseconds())/1000)
							}
						}
						var h *ts.Tensor
						step("cast", func() { h, _ = native.ChannelsLastAs(x, inf.dtype); s.T(h) })
						c.pass(inf, s, h, step)
						step("free", s.Close)
					}
					var b strings.Builder
					tot := 0.0
					for _, k := range names {
						v := times[k]
						slices.Sort(v)
						tot += v[len(v)/2]
						fmt.Fprintf(&b, " %s %.2f", k, v[len(v)/2])
					}
					t.Logf("%s batch %d %s threads %d (ms, medians):%s; total %.2f", c.arch, n, f[1], threads, b.String(), tot)
					return nil
				})
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// minorFaults is the process's minor page faults so far.
func minorFaults() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(0 /* RUSAGE_SELF */, &ru); err != nil {
		return 0
	}
	return ru.Minflt
}
