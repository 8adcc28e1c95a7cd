package train

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/handnet/handnet/weights"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

func fixtureDir(t *testing.T) string {
	dir := os.Getenv("HANDNET_FIXTURES")
	if dir == "" {
		dir = filepath.Join("..", "testdata", "fixtures")
	}
	if _, err := os.Stat(filepath.Join(dir, "cnn-train.pth")); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("golden fixtures missing in CI (%v): `make test` runs `make fixtures` first", err)
		}
		t.Skipf("golden fixtures missing (%v): run `make fixtures`", err)
	}
	return dir
}

func classNames(n int) []string {
	c := make([]string, n)
	for i := range c {
		c[i] = fmt.Sprint("class ", i)
	}
	return c
}

// TestTrainingParityWithPyTorch: 5 SGD steps with momentum, in train mode,
// from the same weights on the same batches, leave every parameter and
// running statistic within 1e-5 of PyTorch's (tools/fixtures/golden.py):
// the study CNN without dropout, and ResNet-18 with --freeze layer4 and
// every BatchNorm updating its statistics.
func TestTrainingParityWithPyTorch(t *testing.T) {
	dir := fixtureDir(t)
	for _, tc := range []struct {
		name string
		cfg  model.Config
	}{
		{"cnn", model.Config{Arch: "cnn", Dropout: "none", Classes: classNames(8), Width: 170, Height: 128}},
		{"resnet18", model.Config{Arch: "resnet18", Freeze: model.FreezeLayer4, Classes: classNames(1000), Width: 170, Height: 128}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			th := torch.NewThread(0)
			defer th.Close()
			err := th.Do(func() error {
				m, err := model.New(tc.cfg, gotch.CPU)
				if err != nil {
					return err
				}
				defer m.Close()
				w, err := weights.Read(filepath.Join(dir, tc.name+".pth"))
				if err != nil {
					return err
				}
				if err := m.Load(w, func(n string) bool { return strings.HasSuffix(n, "num_batches_tracked") }, nil); err != nil {
					return err
				}
				ref, err := weights.Read(filepath.Join(dir, tc.name+"-train.pth"))
				if err != nil {
					return err
				}
				opt := NewSGD(m.Trainable(), 0.01, 0.9, 0)
				for i := range int64(5) {
					x := ref["x"].MustSelect(0, i, false)
					y := ref["y"].MustSelect(0, i, false)
					logits := m.Forward(x, true)
					loss := torch.CrossEntropy(logits, y)
					if err := loss.Backward(); err != nil {
						return err
					}
					if err := opt.Step(); err != nil {
						return err
					}
					for _, t := range []*ts.Tensor{x, y, logits, loss} {
						t.MustDrop()
					}
				}
				worst, where, n := 0.0, "", 0
				for _, nt := range m.Named() {
					want, ok := ref["p."+nt.Name]
					if !ok {
						return fmt.Errorf("%s is not in the fixture", nt.Name)
					}
					d := nt.Tensor.MustSub(want, false).MustAbs(true).MustMax(true)
					if v := d.Float64Values()[0]; v > worst || math.IsNaN(v) {
						worst, where = v, nt.Name
					}
					d.MustDrop()
					n++
				}
				t.Logf("%s: %d tensors after 5 steps, max |handnet - PyTorch| = %.3g (%s)", tc.name, n, worst, where)
				if !(worst <= 1e-5) {
					return fmt.Errorf("%s: %s differs from PyTorch's by %g after 5 steps, want <= 1e-5", tc.name, where, worst)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}
