// Package experiment runs whole experiments: dataset → cache → split →
// loaders → model → trainer → evaluation → report, in a run folder that
// later commands (eval, resume) reload without flags.
//
// A run folder holds run.json (the Spec), split.csv (the split manifest),
// best.safetensors and last.safetensors, history.json/.csv, report.md,
// metrics.json and the plots.
package experiment

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"time"

	"github.com/handnet/handnet/eval"
	"github.com/handnet/handnet/eval/report"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/torch"
	"github.com/handnet/handnet/train"
	"github.com/handnet/handnet/vision"
	"github.com/handnet/handnet/weights"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// Spec is an experiment's full description, saved as run.json.
type Spec struct {
	Data     string         `json:"data"`
	CacheDir string         `json:"cache_dir,omitempty"`
	SkipBad  bool           `json:"skip_bad,omitempty"`
	Exact    bool           `json:"exact,omitempty"`
	Split    string         `json:"split"`  // random, stratified or subject
	Scheme   string         `json:"scheme"` // class8, gender or aspect
	Augment  string         `json:"augment,omitempty"`
	Device   string         `json:"device"`
	Model    model.Config `json:"model"`             // Arch, Dropout, BatchNorm, Freeze, FreezeBN; classes and size are filled in
	Weights  string         `json:"weights,omitempty"` // published ResNet-18 weights to start from
	Train    train.Config   `json:"train"`
	Title    string         `json:"title,omitempty"`
}

// Hooks receive progress; every field is optional.
type Hooks struct {
	Logf    func(format string, args ...any)
	Cache   func(done, total int) // while the image cache is built
	OnBatch func(train.Progress)
	OnEpoch func(train.EpochStats)
}

func (h Hooks) logf(format string, args ...any) {
	if h.Logf != nil {
		h.Logf(format, args...)
	}
}

// Data is an opened dataset with its cache and split.
type Data struct {
	Set    *vision.Dataset
	Cache  *vision.Cache
	Split  vision.Assignment
	Scheme vision.Scheme
}

// Close releases the cache.
func (d *Data) Close() { d.Cache.Close() }

// OpenData opens the spec's dataset and cache (building it if needed) and
// reads the split from manifest when that file exists, else makes it (and
// saves it there when manifest is not empty).
func OpenData(s Spec, manifest string, h Hooks) (*Data, error) {
	scheme, err := vision.ParseScheme(s.Scheme)
	if err != nil {
		return nil, err
	}
	method, err := vision.ParseSplitMethod(s.Split)
	if err != nil {
		return nil, err
	}
	ds, err := vision.Open(s.Data)
	if err != nil {
		return nil, err
	}
	c, err := OpenCache(ds, vision.CacheOptions{Dir: s.CacheDir, SkipBad: s.SkipBad, Exact: s.Exact}, h)
	if err != nil {
		return nil, err
	}
	d := &Data{Set: ds, Cache: c, Scheme: scheme}
	d.Split, _, err = vision.SplitWithManifest(ds.Records, method, s.Train.Seed, manifest)
	if err != nil {
		c.Close()
		return nil, err
	}
	return d, nil
}

// OpenCache opens ds's image cache, building it when it is not current
// (reporting progress through h.Cache), and logs the images it skipped.
func OpenCache(ds *vision.Dataset, o vision.CacheOptions, h Hooks) (*vision.Cache, error) {
	building := !vision.CacheIsCurrent(ds, o)
	if building {
		h.logf("building the image cache for %s (%d images, decoded once)", ds.Dir, len(ds.Records))
		o.Progress = h.Cache
	}
	start := time.Now()
	c, err := vision.OpenCache(ds, o)
	if err != nil {
		return nil, err
	}
	if building {
		h.logf("cache built in %.1fs: %s", time.Since(start).Seconds(), c.Path)
	}
	for i, why := range c.Bad {
		h.logf("skipped %s: %s", ds.Records[i].ImageName, why)
	}
	return c, nil
}

// Loaders returns the train, validation and test loaders for the spec.
func (d *Data) Loaders(s Spec, device gotch.Device) (trainL, valL, testL *vision.Loader, err error) {
	aug, err := vision.ParseAugment(s.Augment)
	if err != nil {
		return nil, nil, nil, err
	}
	return vision.SplitLoaders(d.Set, d.Cache, d.Split, d.Scheme, vision.LoaderOptions{
		BatchSize: s.Train.BatchSize, Shuffle: true, Seed: s.Train.Seed, Device: device, Augment: aug})
}

// ReadSpec reads dir/run.json.
func ReadSpec(dir string) (Spec, error) {
	var s Spec
	b, err := os.ReadFile(filepath.Join(dir, "run.json"))
	if err != nil {
		return s, fmt.Errorf("%w (is %s a run folder made by handnet train?)", err, dir)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("%s: %w", filepath.Join(dir, "run.json"), err)
	}
	return s, nil
}

// Run trains the spec's model in dir and evaluates its best checkpoint on
// the test split, writing the report. With resume it continues the run
// saved in dir. Torch work runs on th.
func Run(ctx context.Context, th *torch.Thread, s Spec, dir string, resume bool, h Hooks) (*report.Run, error) {
	if err := s.Train.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if resume {
		saved, err := ReadSpec(dir)
		if err != nil {
			return nil, fmt.Errorf("resume: %w", err)
		}
		if !sameExperiment(saved, s) {
			return nil, fmt.Errorf("resume: %s was started with other settings; resume with the same flags (or only more --epochs)", filepath.Join(dir, "run.json"))
		}
	} else if _, err := os.Stat(filepath.Join(dir, train.LastCheckpoint)); err == nil {
		return nil, fmt.Errorf("%s already holds a run; use --resume to continue it or choose another --out", dir)
	}
	d, err := OpenData(s, filepath.Join(dir, "split.csv"), h)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	s.Model.Classes = d.Scheme.Classes()
	s.Model.Width, s.Model.Height = d.Cache.W, d.Cache.H
	s.Model.Mean, s.Model.Std = vision.Mean, vision.Std
	b, _ := json.MarshalIndent(s, "", "  ")
	if err := vision.WriteFileAtomic(filepath.Join(dir, "run.json"), append(b, '\n')); err != nil {
		return nil, err
	}
	if s.Weights != "" {
		s.Model.Pretrained = filepath.Base(s.Weights)
	}
	r := &report.Run{Title: s.Title, Data: s.Data, Split: s.Split, Seed: s.Train.Seed, Augment: s.Augment, Model: s.Model, Train: s.Train}
	if s.Model.Arch == "resnet18" {
		if s.Weights == "" {
			r.Notes = append(r.Notes, "ResNet-18 trained from scratch: no --weights were given, so this is not the study's transfer learning.")
		} else {
			r.Notes = append(r.Notes, fmt.Sprintf("ResNet-18 fine-tuned from %s with freeze scenario %q (frozen BatchNorm statistics: %v).", filepath.Base(s.Weights), s.Model.Freeze, s.Model.FreezeBN))
		}
	}
	if r.Title == "" {
		r.Title = "handnet run " + filepath.Base(dir)
	}
	err = th.Do(func() error {
		dev, err := torch.ParseDevice(s.Device)
		if err != nil {
			return err
		}
		r.Device = torch.DeviceName(dev)
		trainL, valL, testL, err := d.Loaders(s, dev)
		if err != nil {
			return err
		}
		h.logf("train %d, validation %d, test %d images; %s on %s", trainL.Len(), valL.Len(), testL.Len(), s.Model.Arch, r.Device)
		torch.ManualSeed(int64(s.Train.Seed))
		m, err := model.New(s.Model, dev)
		if err != nil {
			return err
		}
		if s.Weights != "" {
			if err := weights.LoadPretrained(m, s.Weights); err != nil {
				return err
			}
			h.logf("started from %s", s.Weights)
		}
		tr := &train.Trainer{Model: m, Train: trainL, Val: valL, Config: s.Train, Dir: dir,
			Meta: map[string]string{"split": s.Split, "data": s.Data}, OnBatch: h.OnBatch, OnEpoch: h.OnEpoch}
		r.History, err = tr.Run(ctx, resume)
		if err != nil {
			return err
		}
		r.BestEpoch = bestEpoch(r.History)
		r.Test, err = evaluateCheckpoint(filepath.Join(dir, train.BestCheckpoint), dev, testL, d, "test")
		return err
	})
	if err != nil {
		return r, err
	}
	if err := report.Write(dir, r); err != nil {
		return r, err
	}
	return r, nil
}

// sameExperiment compares what a resumed run may not change: everything
// but the number of epochs, the device and the filled-in model details.
func sameExperiment(a, b Spec) bool {
	norm := func(s Spec) Spec {
		s.Train.Epochs, s.Device, s.Title = 0, "", ""
		s.Model = model.Config{Arch: s.Model.Arch, Dropout: s.Model.Dropout, BatchNorm: s.Model.BatchNorm, Freeze: s.Model.Freeze, FreezeBN: s.Model.FreezeBN}
		return s
	}
	return reflect.DeepEqual(norm(a), norm(b))
}

func bestEpoch(h train.History) int {
	best, acc := 0, -1.0
	for _, e := range h {
		if e.ValAcc > acc {
			best, acc = e.Epoch, e.ValAcc
		}
	}
	return best
}

// evaluateCheckpoint loads a checkpoint and evaluates it on l. Call it on
// a torch thread.
func evaluateCheckpoint(path string, dev gotch.Device, l *vision.Loader, d *Data, split string) (*report.Evaluation, error) {
	c, err := model.ReadCheckpoint(path)
	if err != nil {
		return nil, err
	}
	defer c.Drop()
	m, err := model.LoadModel(c, dev)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	p, err := eval.Predict(func(x *ts.Tensor) *ts.Tensor { return m.Forward(x, false) }, l)
	if err != nil {
		return nil, err
	}
	return report.Evaluate(p, c.Model.Classes, d.Set.Records, split), nil
}

// Evaluate measures a run's checkpoint ("best" or "last") on a split.
func Evaluate(th *torch.Thread, dir, checkpoint, split, device string, h Hooks) (*report.Evaluation, error) {
	s, err := ReadSpec(dir)
	if err != nil {
		return nil, err
	}
	sp, err := vision.ParseSplit(split)
	if err != nil {
		return nil, err
	}
	if device != "" {
		s.Device = device
	}
	manifest := filepath.Join(dir, "split.csv")
	if _, err := os.Stat(manifest); err != nil {
		return nil, fmt.Errorf("%s is missing: the run's split cannot be reproduced safely", manifest)
	}
	d, err := OpenData(s, manifest, h)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	var ev *report.Evaluation
	err = th.Do(func() error {
		dev, err := torch.ParseDevice(s.Device)
		if err != nil {
			return err
		}
		trainL, valL, testL, err := d.Loaders(s, dev)
		if err != nil {
			return err
		}
		l := map[vision.Split]*vision.Loader{vision.Train: trainL, vision.Val: valL, vision.Test: testL}[sp]
		// Evaluate the training split unshuffled and unaugmented too.
		if sp == vision.Train {
			l, err = vision.NewLoader(d.Cache, d.Split.Indices(vision.Train), d.Scheme.Labels(d.Set.Records), d.Scheme.MirrorLabel,
				vision.LoaderOptions{BatchSize: s.Train.BatchSize, Device: dev})
			if err != nil {
				return err
			}
		}
		name := map[string]string{"best": train.BestCheckpoint, "last": train.LastCheckpoint}[checkpoint]
		if name == "" {
			return errors.New("checkpoint: want best or last")
		}
		ev, err = evaluateCheckpoint(filepath.Join(dir, name), dev, l, d, sp.String())
		return err
	})
	return ev, err
}
