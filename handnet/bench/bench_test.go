package bench

import (
	"context"
	"errors"
	"runtime/debug"
	"slices"
	"strings"
	"testing"

	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/sugarme/gotch"
)

func TestParseMode(t *testing.T) {
	for _, c := range []struct {
		in, want string
		ok       bool
	}{
		{"fp32", "fp32", true},
		{"BF16+cl", "bf16+cl", true},
		{"fp32+data", "fp32+data", true},
		{"bf16+loader+cl", "bf16+cl+loader", true},
		{"fp16+cl+data", "fp16+cl+data", true},
		{"+cl", "", false},
		{"fp32+data+loader", "", false},
		{"fp32+graphs", "", false},
		{"int8", "", false},
		{"fp32+nhwc", "", false},
	} {
		m, err := ParseMode(c.in)
		if (err == nil) != c.ok || (c.ok && m.String() != c.want) {
			t.Errorf("ParseMode(%q) = %q, %v; want %q (ok %v)", c.in, m, err, c.want, c.ok)
		}
	}
}

// Every mode measures: positive rates from the steps it says it ran.
func TestMeasure(t *testing.T) {
	th := torch.NewThread(0)
	defer th.Close()
	o := Options{Device: gotch.CPU, Warmup: 1, Steps: 2, MinTime: 1}
	for _, c := range []Case{
		{"cnn", 4, Mode{Precision: model.FP32}, "train"},
		{"cnn", 4, Mode{Precision: model.FP32, Data: "loader"}, "train"},
		{"cnn", 4, Mode{Precision: model.FP32, Data: "device"}, "train"},
		{"cnn", 4, Mode{Precision: model.BF16, ChannelsLast: true}, "infer"},
		{"resnet18", 2, Mode{Precision: model.FP32, ChannelsLast: true}, "train"},
	} {
		var r Row
		if err := th.Do(func() (err error) { r, err = Measure(c, o); return err }); err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		if r.Steps < 2 || r.Seconds <= 0 || r.HandnetImagesPerSec <= 0 || r.Mode != c.Mode.String() || r.Device != "cpu" {
			t.Errorf("%s: row %+v", c, r)
		}
		if got := float64(r.Steps*c.Batch) / r.Seconds; got != r.HandnetImagesPerSec {
			t.Errorf("%s: %v images/s, but %d steps of %d in %vs", c, r.HandnetImagesPerSec, r.Steps, c.Batch, r.Seconds)
		}
	}
	if err := th.Do(func() error { _, err := Measure(Case{"cnn", 4, Mode{}, "eval"}, o); return err }); err == nil {
		t.Error("phase eval accepted")
	}
}

// Measure frees what it makes: the model, the optimizer's momentum, the
// resident batch, every step's result. The live tensors after it are those
// before it, plus what making and closing its model alone leaves: gotch's
// NewConv2D makes a placeholder bias handle it never frees (one per
// convolution: only a finalizer frees it), which no caller can reach.
func TestMeasureFreesItsTensors(t *testing.T) {
	th := torch.NewThread(0)
	defer th.Close()
	// With the collector off only explicit frees release tensors: gotch's
	// finalizers cannot hide a leak, and the counts are exact.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	o := Options{Device: gotch.CPU, Warmup: 1, Steps: 2, MinTime: 1}
	for _, c := range []Case{
		{"cnn", 4, Mode{Precision: model.FP32}, "train"},
		{"cnn", 4, Mode{Precision: model.FP32, ChannelsLast: true}, "train"},
		{"cnn", 4, Mode{Precision: model.FP32, Data: "loader"}, "train"},
		{"cnn", 4, Mode{Precision: model.FP32, Data: "device"}, "infer"},
		{"cnn", 4, Mode{Precision: model.FP32, Eager: true}, "infer"},
		{"cnn", 4, Mode{Precision: model.BF16, ChannelsLast: true}, "infer"},
	} {
		err := th.Do(func() error {
			before := torch.LiveTensors()
			m, err := model.New(c.config(), o.Device)
			if err != nil {
				return err
			}
			m.Close()
			gotchLeak := torch.LiveTensors() - before
			before = torch.LiveTensors()
			if _, err := Measure(c, o); err != nil {
				return err
			}
			if after := torch.LiveTensors(); after != before+gotchLeak {
				t.Errorf("%s: %d live tensors after Measure, %d before (and %d left by a bare model.New and Close): it leaked %d",
					c, after, before, gotchLeak, after-before-gotchLeak)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", c, err)
		}
	}
}

// The PyTorch side runs in Debian's python3-torch, case by case in one
// process; Rounds keeps each side's best figure over its rounds and sets
// the ratio; a +data case is compared with PyTorch's plain run of it.
func TestPyTorchRounds(t *testing.T) {
	py, err := FindPython("", false)
	if err != nil {
		t.Skipf("no PyTorch here (make test installs python3-torch): %v", err)
	}
	o := Options{Device: gotch.CPU, Warmup: 1, Steps: 2, MinTime: 1}
	p, err := StartPyTorch(context.Background(), py, o, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, c := range []Case{{"cnn", 4, Mode{Precision: model.FP32, Data: "device"}, "train"}, {"cnn", 4, Mode{Precision: model.BF16, ChannelsLast: true}, "infer"}} {
		figures := []float64{10, 30, 20} // handnet's side, round by round
		var heard []float64
		row, err := Rounds(c, 3, func(r int) (Row, error) {
			return Row{Model: c.Model, Mode: c.Mode.String(), HandnetImagesPerSec: figures[r]}, nil
		}, p, func(format string, args ...any) { heard = append(heard, args[1].(float64)) })
		if err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		if row.HandnetImagesPerSec != 30 || row.Mode != c.Mode.String() {
			t.Errorf("%s: handnet's side %v (%s), want the best round, 30", c, row.HandnetImagesPerSec, row.Mode)
		}
		if len(heard) != 3 || row.PyTorchImagesPerSec == nil || *row.PyTorchImagesPerSec != slices.Max(heard) || slices.Min(heard) <= 0 {
			t.Fatalf("%s: PyTorch's figures %v, row's %v: want 3 rounds and their best", c, heard, row.PyTorchImagesPerSec)
		}
		if *row.Ratio != row.HandnetImagesPerSec / *row.PyTorchImagesPerSec {
			t.Errorf("%s: ratio %v", c, *row.Ratio)
		}
		if want := PyTorchCase(c).Mode.String() + " (torch "; !strings.HasPrefix(row.PyTorchMode, want) || strings.Contains(row.PyTorchMode, "data") {
			t.Errorf("%s: compared with %q, want PyTorch's %s", c, row.PyTorchMode, PyTorchCase(c).Mode)
		}
	}
	if err := p.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	bad, err := StartPyTorch(context.Background(), py, o, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if _, err := bad.Measure(Case{"vgg", 4, Mode{Precision: model.FP32}, "train"}); err == nil || !strings.Contains(err.Error(), "vgg") {
		t.Errorf("unknown model: %v, want the script's error naming it", err)
	}
}

func mustMode(t *testing.T, s string) Mode {
	m, err := ParseMode(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestFindPythonNamesWhatItTried(t *testing.T) {
	_, err := FindPython("/nonexistent/python3", false)
	if !errors.Is(err, ErrNoPyTorch) {
		t.Fatalf("got %v, want ErrNoPyTorch", err)
	}
	t.Setenv("HANDNET_PYTHON", "/bin/false")
	if _, err := FindPython("", false); !errors.Is(err, ErrNoPyTorch) {
		t.Errorf("/bin/false taken for a python with torch: %v", err)
	}
}
