// Package bench measures handnet's training and inference steps in images
// per second — per model, batch size, mode and phase — and runs the same
// steps in PyTorch (tools/bench/pytorch_bench.py) for the ratio. `handnet
// bench` prints what it measures.
//
// A training step is what the trainer does per batch: forward, cross-entropy,
// backward, the fused SGD update (lr 0.0025, momentum 0.9). An inference
// step is a forward pass in eval mode without gradients. Timing: warm-up
// steps, then steps until both Options.Steps and Options.MinTime are
// reached; on CUDA the clock is read after the device has finished.
//
// Steps run with denormal floats flushed to zero, on both sides
// (native.FlushDenormal, torch.set_flush_denormal): training steps repeated
// on one batch drive the model onto it within a second, into numbers below
// fp32's normal range whose arithmetic the CPU runs far slower (the study
// CNN at batch 1 in PyTorch: 38 images/s in the first half second, 4–20
// after), so that a side's figure would depend on how many steps it had
// already made — the faster side's the more.
//
// Floor 6 (study and library) of handnet's layering: it imports packages of floors 0–6 only
// (README, "Packages"; tools/floors checks it).
package bench

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/native"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/handnet/handnet/train"
	"github.com/handnet/handnet/vision"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// Mode is how a step runs: its precision, memory layout, and where its
// batches come from.
type Mode struct {
	Precision    model.Precision
	ChannelsLast bool
	// Data is where batches come from: "" one batch resident on the device
	// (the model's speed alone), "loader" handnet's CPU loader as `handnet
	// train` uses it (decoded cache → normalised batch → device), "device"
	// the cache on the device (--data-on-device).
	Data string
	// Eager runs inference steps on the training model in eval mode under
	// no-grad (+eager), as handnet did before its inference form (BatchNorm
	// folded, prepacked weights, inference mode), for comparison.
	Eager bool
}

// ParseMode reads a mode such as "fp32", "bf16+cl", "fp32+data" or
// "fp16+cl+loader": a precision, then any of +cl (channels last), +data
// (the cache on the device) and +loader (the CPU loader).
func ParseMode(s string) (Mode, error) {
	parts := strings.Split(strings.ToLower(strings.TrimSpace(s)), "+")
	p, err := model.ParsePrecision(parts[0])
	if err != nil || parts[0] == "" {
		return Mode{}, fmt.Errorf("mode %q: start with fp32, bf16 or fp16", s)
	}
	m := Mode{Precision: p}
	for _, x := range parts[1:] {
		switch x {
		case "cl":
			m.ChannelsLast = true
		case "data", "loader":
			if m.Data != "" {
				return Mode{}, fmt.Errorf("mode %q: +data and +loader exclude each other", s)
			}
			m.Data = map[string]string{"data": "device", "loader": "loader"}[x]
		case "eager":
			m.Eager = true
		case "graphs":
			return Mode{}, fmt.Errorf("mode %q: CUDA graphs are not implemented yet", s)
		default:
			return Mode{}, fmt.Errorf("mode %q: unknown part +%s (want +cl, +data, +loader or +eager)", s, x)
		}
	}
	return m, nil
}

// String is the canonical name, e.g. "bf16+cl+data".
func (m Mode) String() string {
	s := string(m.Precision)
	if s == "" {
		s = string(model.FP32)
	}
	if m.ChannelsLast {
		s += "+cl"
	}
	switch m.Data {
	case "device":
		s += "+data"
	case "loader":
		s += "+loader"
	}
	if m.Eager {
		s += "+eager"
	}
	return s
}

// Case is one measurement.
type Case struct {
	Model string // cnn or resnet18
	Batch int
	Mode  Mode
	Phase string // train or infer
}

// String names a case as the PyTorch script reads it: MODEL:BATCH:MODE:PHASE.
func (c Case) String() string { return fmt.Sprintf("%s:%d:%s:%s", c.Model, c.Batch, c.Mode, c.Phase) }

// Options configures a measurement.
type Options struct {
	Device  gotch.Device
	Threads int           // intra-op threads of the classifier a predict step loads (0: all usable CPUs)
	Photos  string        // a folder of JPEG photos for predict steps (see Photos)
	Warmup  int           // steps before the clock starts; 0 means 5
	Steps   int           // at least this many timed steps; 0 means 10
	MinTime time.Duration // and at least this long; 0 means 2s
}

func (o Options) withDefaults() Options {
	if o.Warmup <= 0 {
		o.Warmup = 5
	}
	if o.Steps <= 0 {
		o.Steps = 10
	}
	if o.MinTime <= 0 {
		o.MinTime = 2 * time.Second
	}
	return o
}

// Row is one case's figures. PyTorchImagesPerSec and Ratio are nil when
// PyTorch did not run (PyTorchNote says why).
type Row struct {
	Model               string   `json:"model"`
	Batch               int      `json:"batch"`
	Mode                string   `json:"mode"`
	Phase               string   `json:"phase"`
	Device              string   `json:"device"`
	HandnetImagesPerSec float64  `json:"handnet_images_per_sec"`
	PyTorchImagesPerSec *float64 `json:"pytorch_images_per_sec"`
	Ratio               *float64 `json:"ratio"`
	Steps               int      `json:"steps"`
	Seconds             float64  `json:"seconds"`
	PyTorchMode         string   `json:"pytorch_mode,omitempty"` // the PyTorch steps compared against
	PyTorchNote         string   `json:"pytorch_note,omitempty"`
}

// W and H are the study's input size.
const W, H = vision.Width, vision.Height

func (c Case) config() model.Config {
	cfg := model.Config{Arch: c.Model, Classes: vision.Classes8.Classes(), Width: W, Height: H, Mean: vision.Mean, Std: vision.Std}
	if c.Model == "cnn" {
		cfg.Dropout = model.FinalDropout
	}
	return cfg
}

// CheckMemory refuses a case whose estimated activations exceed the
// memory available (model.CheckBatchMemory), before anything is allocated.
func CheckMemory(c Case, device gotch.Device) error {
	return model.CheckBatchMemory(c.config(), c.Batch, c.Phase == "train", device, "--batch")
}

// Measure runs case c on the calling torch thread and returns its row.
func Measure(c Case, o Options) (Row, error) {
	o = o.withDefaults()
	if c.Batch <= 0 {
		return Row{}, fmt.Errorf("batch %d, want > 0", c.Batch)
	}
	if c.Phase != "train" && c.Phase != "infer" && c.Phase != "predict" {
		return Row{}, fmt.Errorf("phase %q: want train, infer or predict", c.Phase)
	}
	if err := CheckMemory(c, o.Device); err != nil {
		return Row{}, err
	}
	if native.FlushDenormal(true) {
		defer native.FlushDenormal(false)
	}
	torch.ManualSeed(0)
	cfg := c.config()
	m, err := model.New(cfg, o.Device)
	if err != nil {
		return Row{}, err
	}
	defer m.Close()
	if c.Mode.ChannelsLast {
		if err := m.SetChannelsLast(true); err != nil {
			return Row{}, err
		}
	}
	if err := m.SetPrecision(c.Mode.Precision); err != nil {
		return Row{}, err
	}
	var step func() (*ts.Tensor, error) // returns a tensor whose reading waits for the step
	if c.Phase == "predict" {
		predict, done, err := predictStep(c, m, o)
		if err != nil {
			return Row{}, err
		}
		defer done()
		step = func() (*ts.Tensor, error) { return nil, predict() }
		return timeSteps(c, o, step)
	}
	next, done, err := batches(c, o.Device)
	if err != nil {
		return Row{}, err
	}
	defer done()

	if c.Phase == "train" {
		opt := train.NewSGD(m.Trainable(), 0.0025, 0.9, 0)
		defer opt.Close()
		step = func() (*ts.Tensor, error) {
			x, y, free, err := next()
			if err != nil {
				return nil, err
			}
			defer free()
			s := torch.NewScope()
			defer s.Close()
			logits := s.T(m.Forward(x, true))
			loss := s.T(torch.CrossEntropy(logits, y))
			if err := loss.Backward(); err != nil {
				return nil, err
			}
			if err := opt.Step(); err != nil {
				return nil, err
			}
			return s.Keep(loss), nil
		}
	} else if c.Mode.Eager {
		step = func() (*ts.Tensor, error) {
			x, _, free, err := next()
			if err != nil {
				return nil, err
			}
			defer free()
			var out *ts.Tensor
			err = torch.NoGrad(func() error { out = m.Forward(x, false); return nil })
			return out, err
		}
	} else {
		// What predict, eval and serve run: the model's inference form.
		inf, err := model.NewInference(m)
		if err != nil {
			return Row{}, err
		}
		defer inf.Close()
		step = func() (*ts.Tensor, error) {
			x, _, free, err := next()
			if err != nil {
				return nil, err
			}
			defer free()
			return inf.Forward(x)
		}
	}
	return timeSteps(c, o, step)
}

// timeSteps runs warm-up steps, then timed steps until both o.Steps and
// o.MinTime are reached, and returns the row. It owns what each step
// returns: the newest step's result (which wait reads) frees the one
// before it, and the last is freed on return.
func timeSteps(c Case, o Options, step func() (*ts.Tensor, error)) (Row, error) {
	held := torch.NewScope()
	defer held.Close()
	var last *ts.Tensor
	run := func() error {
		t, err := step()
		if err != nil {
			return err
		}
		held.Free(last)
		last = held.T(t)
		return nil
	}
	wait := func() { // make the CPU wait for the device
		if last != nil {
			s := torch.NewScope()
			defer s.Close()
			torch.Float64s(s.T(last.MustSum(gotch.Double, false)))
		}
	}
	for range o.Warmup {
		if err := run(); err != nil {
			return Row{}, err
		}
	}
	wait()
	start := time.Now()
	n := 0
	var el time.Duration
	for {
		if err := run(); err != nil {
			return Row{}, err
		}
		if n++; n >= o.Steps {
			wait()
			if el = time.Since(start); el >= o.MinTime {
				break
			}
		}
	}
	return Row{Model: c.Model, Batch: c.Batch, Mode: c.Mode.String(), Phase: c.Phase, Device: torch.DeviceName(o.Device),
		HandnetImagesPerSec: float64(n*c.Batch) / el.Seconds(), Steps: n, Seconds: el.Seconds()}, nil
}

// batches returns the source of a case's batches: one resident batch, or
// a loader over synthetic cached images (4 batches' worth, at least 64).
func batches(c Case, device gotch.Device) (next func() (x, y *ts.Tensor, free func(), err error), done func(), err error) {
	if c.Mode.Data == "" {
		s := torch.NewScope() // the resident batch, until done
		x := s.T(ts.MustRandn([]int64{int64(c.Batch), 3, H, W}, gotch.Float, device))
		if c.Mode.ChannelsLast { // laid out once, as PyTorch's side makes its batch
			cl, err := native.ChannelsLast(x)
			s.Free(x)
			if err != nil {
				s.Close()
				return nil, nil, err
			}
			x = s.T(cl)
		}
		y := s.T(ts.MustRandint(int64(len(vision.Classes8.Classes())), []int64{int64(c.Batch)}, gotch.Int64, device))
		return func() (*ts.Tensor, *ts.Tensor, func(), error) { return x, y, func() {}, nil }, s.Close, nil
	}
	n := max(4*c.Batch, 64)
	img := make([]byte, n*3*W*H)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range img {
		img[i] = byte(rng.Uint32())
	}
	cache, err := vision.MemoryCache(W, H, img)
	if err != nil {
		return nil, nil, err
	}
	labels := make([]int, n)
	idx := make([]int, n)
	for i := range labels {
		labels[i], idx[i] = i%len(vision.Classes8.Classes()), i
	}
	o := vision.LoaderOptions{BatchSize: c.Batch, Shuffle: true, Seed: 1, Device: device}
	var dev *vision.DeviceImages
	if c.Mode.Data == "device" {
		if dev, err = vision.UploadCache(cache, device); err != nil {
			return nil, nil, err
		}
		o.OnDevice = dev
	}
	l, err := vision.NewLoader(cache, idx, labels, nil, o)
	if err != nil {
		return nil, nil, err
	}
	epoch, e := 0, l.Epoch(0, 0)
	next = func() (*ts.Tensor, *ts.Tensor, func(), error) {
		b, err := e.Next()
		if err == nil && b == nil {
			e.Close()
			epoch++
			e = l.Epoch(epoch, 0)
			b, err = e.Next()
		}
		if err != nil {
			return nil, nil, nil, err
		}
		if b == nil {
			return nil, nil, nil, errors.New("loader gave no batch")
		}
		return b.X, b.Y, b.Drop, nil
	}
	done = func() {
		e.Close()
		l.Close()
		if dev != nil {
			dev.Close()
		}
	}
	return next, done, nil
}
