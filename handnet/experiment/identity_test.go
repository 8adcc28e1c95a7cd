package experiment_test

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/handnet/handnet/handnet/experiment"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/train"
	"github.com/handnet/handnet/vision"
)

// fakeSpec writes count synthetic hands (small photos: a cache build takes
// well under a second) into a new folder of dir and returns a spec of the
// study's CNN over them, its cache in dir.
func fakeSpec(t *testing.T, dir string, count int) experiment.Spec {
	t.Helper()
	data := filepath.Join(dir, "data")
	if err := vision.GenerateFake(data, vision.FakeOptions{Count: count, Width: 340, Height: 256, PerSubject: 12}); err != nil {
		t.Fatal(err)
	}
	cfg := train.DefaultConfig()
	cfg.Epochs, cfg.BatchSize = 2, 8
	return experiment.Spec{Data: data, CacheDir: filepath.Join(dir, "cache"), Split: "random", Scheme: "class8", Device: "cpu",
		Model: model.Config{Arch: "cnn", Dropout: model.FinalDropout}, Train: cfg}
}

// openData opens s's data (building its cache), closed with the test.
func openData(t *testing.T, s experiment.Spec) *experiment.Data {
	t.Helper()
	d, err := experiment.OpenData(context.Background(), s, "", experiment.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

func identify(t *testing.T, s experiment.Spec, d *experiment.Data) experiment.Identity {
	t.Helper()
	id, err := experiment.Identify(s, d)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestIdentify: a run's key changes with everything that changes its result
// and with nothing else (epochs, device, threads, titles, where files live,
// what Run fills in), and Diff names the one part that changed.
func TestIdentify(t *testing.T) {
	dir := t.TempDir()
	base := fakeSpec(t, dir, 48)
	d := openData(t, base)
	id := identify(t, base, d)
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(id.Key) {
		t.Fatalf("key %q: want 32 hex digits", id.Key)
	}
	if again := identify(t, base, d); !reflect.DeepEqual(again, id) {
		t.Fatalf("Identify is not deterministic: %+v then %+v", id, again)
	}
	for _, p := range []string{"records", "images", "skip_bad", "split", "labels", "augment", "model", "weights", "train"} {
		if id.Parts[p] == "" {
			t.Errorf("part %q missing from %v", p, id.Parts)
		}
	}
	if _, ok := id.Parts["precision"]; ok {
		t.Errorf("an fp32 run has a precision part (fp32 runs keep their keys of before): %v", id.Parts)
	}
	weightsFile := filepath.Join(dir, "resnet18.pth")
	if err := os.WriteFile(weightsFile, []byte("not really weights: only hashed"), 0o644); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		name   string
		change func(*experiment.Spec)
		part   string // the one part that differs; "" for the same key
	}{
		// The same experiment.
		{"more epochs", func(s *experiment.Spec) { s.Train.Epochs = 30 }, ""},
		{"checkpoint every", func(s *experiment.Spec) { s.Train.CheckpointEvery = 100 }, ""},
		{"device", func(s *experiment.Spec) { s.Device = "cuda:1" }, ""},
		{"title", func(s *experiment.Spec) { s.Title = "another title" }, ""},
		{"cache folder", func(s *experiment.Spec) { s.CacheDir = "/elsewhere" }, ""},
		{"data on device", func(s *experiment.Spec) { s.DataOnDevice = "on" }, ""},
		{"channels last", func(s *experiment.Spec) { s.ChannelsLast = true }, ""},
		{"world size", func(s *experiment.Spec) { s.WorldSize = 4 }, ""},
		{"explicit fp32", func(s *experiment.Spec) { s.Precision = "fp32" }, ""},
		{"explicit no augmentation", func(s *experiment.Spec) { s.Augment = "none" }, ""},
		{"what Run fills in", func(s *experiment.Spec) {
			s.Model.Classes, s.Model.Width, s.Model.Height = []string{"a", "b"}, 170, 128
			s.Model.Mean, s.Model.Std = vision.Mean, vision.Std
			s.Model.Pretrained, s.Model.ExactDecode = "resnet18.pth", true
			s.Identity = experiment.Identity{Key: "stale", Parts: map[string]string{"train": "x"}}
		}, ""},
		// Another experiment.
		{"seed", func(s *experiment.Spec) { s.Train.Seed++ }, "train"},
		{"learning rate", func(s *experiment.Spec) { s.Train.LR = 0.01 }, "train"},
		{"batch size", func(s *experiment.Spec) { s.Train.BatchSize = 16 }, "train"},
		{"momentum", func(s *experiment.Spec) { s.Train.Momentum = 0.5 }, "train"},
		{"schedule", func(s *experiment.Spec) { s.Train.Schedule = "cosine" }, "train"},
		{"split", func(s *experiment.Spec) { s.Split = "stratified" }, "split"},
		{"labels", func(s *experiment.Spec) { s.Scheme = "gender" }, "labels"},
		{"augmentation", func(s *experiment.Spec) { s.Augment = "default" }, "augment"},
		{"dropout", func(s *experiment.Spec) { s.Model.Dropout = "fc1-0.5" }, "model"},
		{"batch norm", func(s *experiment.Spec) { s.Model.BatchNorm = true }, "model"},
		{"architecture", func(s *experiment.Spec) { s.Model.Arch = "resnet18" }, "model"},
		{"freeze", func(s *experiment.Spec) { s.Model.Freeze = model.FreezeFC }, "model"},
		{"skip bad", func(s *experiment.Spec) { s.SkipBad = true }, "skip_bad"},
		{"precision", func(s *experiment.Spec) { s.Precision = "bf16" }, "precision"},
		{"starting weights", func(s *experiment.Spec) { s.Weights = weightsFile }, "weights"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := base
			s.Model.Classes = nil // no aliasing of base's slices
			c.change(&s)
			got := identify(t, s, d)
			diff := id.Diff(got)
			if c.part == "" {
				if got.Key != id.Key || diff != nil {
					t.Fatalf("key changed (%s → %s): %q", id.Key, got.Key, diff)
				}
				return
			}
			if got.Key == id.Key {
				t.Fatalf("key unchanged (%s); parts %v", got.Key, got.Parts)
			}
			if len(diff) != 1 || !strings.HasPrefix(diff[0], c.part+": ") {
				t.Fatalf("Diff = %q, want one entry for %q", diff, c.part)
			}
		})
	}

	// The weights are identified by their contents, not their name.
	t.Run("weights by content", func(t *testing.T) {
		s := base
		s.Weights = weightsFile
		a := identify(t, s, d)
		moved := filepath.Join(dir, "moved.pth")
		b, _ := os.ReadFile(weightsFile)
		if err := os.WriteFile(moved, b, 0o644); err != nil {
			t.Fatal(err)
		}
		s.Weights = moved
		if got := identify(t, s, d); got.Key != a.Key {
			t.Errorf("the same weights under another name: key %s → %s", a.Key, got.Key)
		}
		if err := os.WriteFile(moved, append(b, '!'), 0o644); err != nil {
			t.Fatal(err)
		}
		if diff := a.Diff(identify(t, s, d)); len(diff) != 1 || !strings.HasPrefix(diff[0], "weights: ") {
			t.Errorf("changed weights: Diff = %q", diff)
		}
		s.Weights = filepath.Join(dir, "missing.pth")
		if _, err := experiment.Identify(s, d); err == nil || !strings.Contains(err.Error(), "missing.pth") {
			t.Errorf("missing weights file: %v, want an error naming it", err)
		}
	})
}

// TestIdentifyData: the dataset is part of the key, by its records and by
// its images as decoded; the same dataset in another folder keeps the key.
func TestIdentifyData(t *testing.T) {
	dir := t.TempDir()
	base := fakeSpec(t, filepath.Join(dir, "a"), 48)
	id := identify(t, base, openData(t, base))

	// The same files copied elsewhere: the records and images hash the same.
	moved := fakeSpec(t, filepath.Join(dir, "b"), 48)
	if got := identify(t, moved, openData(t, moved)); got.Key != id.Key {
		t.Errorf("the same dataset in another folder: %q", id.Diff(got))
	}

	// Fewer images: another dataset.
	fewer := fakeSpec(t, filepath.Join(dir, "c"), 36)
	if diff := id.Diff(identify(t, fewer, openData(t, fewer))); !hasParts(diff, "images", "records") {
		t.Errorf("another dataset: Diff = %q, want records and images", diff)
	}

	// The same records decoded another way (exact decode): other images.
	exact := base
	exact.Exact = true
	if diff := id.Diff(identify(t, exact, openData(t, exact))); !hasParts(diff, "images") {
		t.Errorf("exact decode: Diff = %q, want images only", diff)
	}

	// Another image size: other images too.
	small := base
	small.Width, small.Height = 85, 64
	if diff := id.Diff(identify(t, small, openData(t, small))); !hasParts(diff, "images") {
		t.Errorf("another image size: Diff = %q, want images only", diff)
	}
}

// hasParts tells whether diff names exactly parts, in order.
func hasParts(diff []string, parts ...string) bool {
	if len(diff) != len(parts) {
		return false
	}
	for i, p := range parts {
		if !strings.HasPrefix(diff[i], p+": ") {
			return false
		}
	}
	return true
}

// TestIdentityDiff: Diff lists every differing part once, sorted by name,
// as "part: a → b" (a part one side lacks reads empty), and falls back to
// the keys when the parts agree.
func TestIdentityDiff(t *testing.T) {
	parts := func(kv ...string) map[string]string {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	a := experiment.Identity{Key: "k1", Parts: parts("split", "random", "train", `{"lr":0.01}`, "weights", "none")}
	for _, c := range []struct {
		name string
		b    experiment.Identity
		want []string
	}{
		{"equal", experiment.Identity{Key: "k1", Parts: parts("split", "random", "train", `{"lr":0.01}`, "weights", "none")}, nil},
		{"one part", experiment.Identity{Key: "k2", Parts: parts("split", "random", "train", `{"lr":0.02}`, "weights", "none")},
			[]string{`train: {"lr":0.01} → {"lr":0.02}`}},
		{"two parts, sorted", experiment.Identity{Key: "k2", Parts: parts("split", "subject", "train", `{"lr":0.01}`, "weights", "abc")},
			[]string{"split: random → subject", "weights: none → abc"}},
		{"a part added", experiment.Identity{Key: "k2", Parts: parts("precision", "bf16", "split", "random", "train", `{"lr":0.01}`, "weights", "none")},
			[]string{"precision:  → bf16"}},
		{"a part missing", experiment.Identity{Key: "k2", Parts: parts("split", "random", "train", `{"lr":0.01}`)},
			[]string{"weights: none → "}},
		{"only the key", experiment.Identity{Key: "k2", Parts: a.Parts}, []string{"key: k1 → k2"}},
		{"no parts at all", experiment.Identity{Key: "k2"},
			[]string{"split: random → ", `train: {"lr":0.01} → `, "weights: none → "}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := a.Diff(c.b); !reflect.DeepEqual(got, c.want) {
				t.Errorf("Diff = %q, want %q", got, c.want)
			}
		})
	}
	if got := (experiment.Identity{}).Diff(experiment.Identity{}); got != nil {
		t.Errorf("empty identities: Diff = %q", got)
	}
}
