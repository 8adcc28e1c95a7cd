package weights

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// fixtures returns the folder `make fixtures` writes (tools/fixtures/golden.py).
// CI generates it; elsewhere the golden tests skip when it is absent.
func fixtures(t *testing.T) string {
	dir := os.Getenv("HANDNET_FIXTURES")
	if dir == "" {
		dir = filepath.Join("..", "testdata", "fixtures")
	}
	if _, err := os.Stat(filepath.Join(dir, "resnet18.pth")); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("golden fixtures missing in CI (%v): `make test` runs `make fixtures` first", err)
		}
		t.Skipf("golden fixtures missing (%v): run `make fixtures`", err)
	}
	return dir
}

func classes(n int) []string {
	c := make([]string, n)
	for i := range c {
		c[i] = fmt.Sprint("class ", i)
	}
	return c
}

// golden loads weights into a fresh model and compares its eval-mode
// logits with PyTorch's on the saved input.
func golden(t *testing.T, cfg model.Config, weightsFile, ioFile string) {
	th := torch.NewThread(0)
	defer th.Close()
	err := th.Do(func() error {
		m, err := model.New(cfg, gotch.CPU)
		if err != nil {
			return err
		}
		w, err := Read(weightsFile)
		if err != nil {
			return err
		}
		if err := m.Load(w, func(n string) bool { return strings.HasSuffix(n, "num_batches_tracked") }, nil); err != nil {
			return err
		}
		io, err := Read(ioFile)
		if err != nil {
			return err
		}
		var diff float64
		err = torch.NoGrad(func() error {
			got := m.Forward(io["input"], false)
			d := got.MustSub(io["logits"], true).MustAbs(true).MustMax(true)
			diff = d.Float64Values()[0]
			d.MustDrop()
			return nil
		})
		t.Logf("%s: max |logits - PyTorch's| = %.3g", filepath.Base(weightsFile), diff)
		if err == nil && !(diff <= 1e-4) || math.IsNaN(diff) {
			return fmt.Errorf("%s: logits differ from PyTorch's by up to %g, want <= 1e-4", filepath.Base(weightsFile), diff)
		}
		if err != nil {
			return err
		}
		// The inference form (BatchNorm folded, prepacked, channels last,
		// inference mode) equals the model it was made from within 1e-5.
		inf, err := model.NewInference(m)
		if err != nil {
			return err
		}
		defer inf.Close()
		var want *ts.Tensor
		if err := torch.NoGrad(func() error { want = m.Forward(io["input"], false); return nil }); err != nil {
			return err
		}
		defer want.MustDrop()
		got, err := inf.Forward(io["input"])
		if err != nil {
			return err
		}
		defer got.MustDrop()
		d := got.MustSub(want, false).MustAbs(true).MustMax(true)
		folded := d.Float64Values()[0]
		d.MustDrop()
		t.Logf("%s: inference form: max |logits - model's| = %.3g", filepath.Base(weightsFile), folded)
		if !(folded <= 1e-5) {
			return fmt.Errorf("%s: inference form's logits differ from the model's by up to %g, want <= 1e-5", filepath.Base(weightsFile), folded)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestGoldenResNet18(t *testing.T) {
	dir := fixtures(t)
	cfg := model.Config{Arch: "resnet18", Classes: classes(1000), Width: 170, Height: 128}
	golden(t, cfg, filepath.Join(dir, "resnet18.pth"), filepath.Join(dir, "resnet18-io.pth"))
	golden(t, cfg, filepath.Join(dir, "resnet18-legacy.pth"), filepath.Join(dir, "resnet18-io.pth"))
}

func TestGoldenStudyCNN(t *testing.T) {
	dir := fixtures(t)
	cfg := model.Config{Arch: "cnn", Dropout: "none", Classes: classes(8), Width: 170, Height: 128}
	golden(t, cfg, filepath.Join(dir, "cnn.pth"), filepath.Join(dir, "cnn-io.pth"))
}

// TestLoadPretrained: the 1000-class head is replaced by an 8-class one;
// anything else that does not fit is an error naming it.
func TestLoadPretrained(t *testing.T) {
	dir := fixtures(t)
	th := torch.NewThread(0)
	defer th.Close()
	err := th.Do(func() error {
		m, err := model.New(model.Config{Arch: "resnet18", Classes: classes(8), Width: 170, Height: 128}, gotch.CPU)
		if err != nil {
			return err
		}
		if err := LoadPretrained(m, filepath.Join(dir, "resnet18.pth")); err != nil {
			return err
		}
		if m.Config.Pretrained != "resnet18.pth" {
			return fmt.Errorf("Pretrained = %q", m.Config.Pretrained)
		}
		w, err := Read(filepath.Join(dir, "resnet18.pth"))
		if err != nil {
			return err
		}
		// Equal weights where names match.
		for _, nt := range m.Named() {
			if src, ok := w[nt.Name]; ok && !strings.HasPrefix(nt.Name, "fc.") {
				if !nt.Tensor.MustEqual(src, false) {
					return fmt.Errorf("%s not loaded", nt.Name)
				}
			}
		}
		// A model that does not fit: wrong shape, missing and unexpected names.
		w["layer1.0.conv1.weight"] = ts.MustZeros([]int64{3, 3}, gotch.Float, gotch.CPU)
		delete(w, "layer2.0.bn1.running_var")
		w["layer9.weight"] = ts.MustZeros([]int64{1}, gotch.Float, gotch.CPU)
		err = m.Load(w, func(n string) bool { return strings.HasSuffix(n, "num_batches_tracked") }, func(n string) bool { return strings.HasPrefix(n, "fc.") })
		if err == nil {
			return fmt.Errorf("mismatched weights accepted")
		}
		for _, want := range []string{"layer1.0.conv1.weight", "layer2.0.bn1.running_var", "layer9.weight"} {
			if !strings.Contains(err.Error(), want) {
				return fmt.Errorf("error %q does not name %s", err, want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestReadBadFiles: truncated and foreign files are errors, not crashes.
func TestReadBadFiles(t *testing.T) {
	dir := t.TempDir()
	files := map[string][]byte{"garbage.pth": []byte("garbage\n"), "empty.pth": nil}
	fx := os.Getenv("HANDNET_FIXTURES")
	if fx == "" {
		fx = filepath.Join("..", "testdata", "fixtures")
	}
	for _, name := range []string{"resnet18.pth", "resnet18-legacy.pth"} {
		if b, err := os.ReadFile(filepath.Join(fx, name)); err == nil {
			files["truncated-"+name] = b[:len(b)/40]
		}
	}
	th := torch.NewThread(1)
	defer th.Close()
	for name, b := range files {
		p := filepath.Join(dir, name)
		os.WriteFile(p, b, 0o644)
		err := th.Do(func() error { _, err := Read(p); return err })
		if err == nil {
			t.Errorf("%s: read without error", name)
		}
	}
}

// TestGoldenGradCAM: handnet's Grad-CAM and HiResCAM of the saved input
// equal PyTorch's (tools/fixtures/golden.py) within 1e-4, for the study's
// CNN (last block) and ResNet-18 (layer4).
func TestGoldenGradCAM(t *testing.T) {
	dir := fixtures(t)
	for _, tc := range []struct {
		name string
		cfg  model.Config
	}{
		{"cnn", model.Config{Arch: "cnn", Dropout: "none", Classes: classes(8), Width: 170, Height: 128}},
		{"resnet18", model.Config{Arch: "resnet18", Classes: classes(1000), Width: 170, Height: 128}},
	} {
		th := torch.NewThread(0)
		err := th.Do(func() error {
			m, err := model.New(tc.cfg, gotch.CPU)
			if err != nil {
				return err
			}
			defer m.Close()
			w, err := Read(filepath.Join(dir, tc.name+".pth"))
			if err != nil {
				return err
			}
			if err := m.Load(w, func(n string) bool { return strings.HasSuffix(n, "num_batches_tracked") }, nil); err != nil {
				return err
			}
			io, err := Read(filepath.Join(dir, tc.name+"-io.pth"))
			if err != nil {
				return err
			}
			ref, err := Read(filepath.Join(dir, tc.name+"-cam.pth"))
			if err != nil {
				return err
			}
			x := io["input"].MustNarrow(0, 0, 1, false)
			cls := int(ref["class"].Int64Values()[0])
			for _, method := range []model.CAMMethod{model.HiResCAMMethod, model.GradCAMMethod} {
				cam, err := model.GradCAM(m, x, cls, method)
				if err != nil {
					return err
				}
				maxDiff := func(got []float32, want *ts.Tensor) float64 {
					w := want.Vals().([]float32)
					if len(w) != len(got) {
						return math.Inf(1)
					}
					d := 0.0
					for i := range w {
						d = math.Max(d, math.Abs(float64(got[i])-float64(w[i])))
					}
					return d
				}
				dCam, dRaw := maxDiff(cam.Values, ref[string(method)]), maxDiff(cam.Raw, ref[string(method)+"_raw"])
				t.Logf("%s %s: class %d, max |map - PyTorch's| %.3g (scaled), %.3g (raw %dx%d)", tc.name, method, cls, dCam, dRaw, cam.RawW, cam.RawH)
				if cam.Class != cls || cam.Method != method || !(dCam <= 1e-4) || !(dRaw <= 1e-4) {
					return fmt.Errorf("%s %s: map differs from PyTorch's: %g scaled, %g raw (want <= 1e-4)", tc.name, method, dCam, dRaw)
				}
			}
			return nil
		})
		th.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
}
