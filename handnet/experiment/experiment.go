// Package experiment runs whole experiments: dataset → cache → split →
// loaders → model → trainer → evaluation → report, in a run folder (Folder)
// that later commands (eval, resume, reproduce) reload without flags.
//
// A run folder holds run.json (the Spec and its Identity), split.csv (the
// split manifest), best.safetensors, last.safetensors and
// epoch.safetensors, history.json/.csv, report.md, metrics.json and the
// plots.
//
// Floor 6 (study and library) of handnet's layering: it imports packages of floors 0–6 only
// (README, "Packages"; tools/floors checks it).
package experiment

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/handnet/handnet/eval"
	"github.com/handnet/handnet/eval/report"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/dist"
	"github.com/handnet/handnet/handnet/runtime/native"
	"github.com/handnet/handnet/handnet/runtime/rundir"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/handnet/handnet/train"
	"github.com/handnet/handnet/vision"
	"github.com/handnet/handnet/weights"
	"github.com/sugarme/gotch"
	xdraw "golang.org/x/image/draw"
)

// Spec is an experiment's full description, saved as run.json.
type Spec struct {
	Data     string `json:"data"`
	CacheDir string `json:"cache_dir,omitempty"`
	SkipBad  bool   `json:"skip_bad,omitempty"`
	Exact    bool   `json:"exact,omitempty"`
	// Budgets of each decode when the cache is built (0: the defaults).
	MaxPixels int64  `json:"max_pixels,omitempty"`
	MaxBytes  int64  `json:"max_bytes,omitempty"`
	Split     string `json:"split"`  // random, stratified or subject
	Scheme    string `json:"scheme"` // class8, gender or aspect
	Augment   string `json:"augment,omitempty"`
	Device    string `json:"device"`
	// Precision of the forward passes: fp32 (""), bf16 or fp16 (autocast;
	// weights and optimizer state stay fp32). ChannelsLast lays the
	// convolutions out NHWC. DataOnDevice is auto (""), on or off: the
	// image cache uploaded once to the device (vision.UploadCache).
	Precision    string       `json:"precision,omitempty"`
	ChannelsLast bool         `json:"channels_last,omitempty"`
	DataOnDevice string       `json:"data_on_device,omitempty"`
	Model        model.Config `json:"model"`             // Arch, Dropout, BatchNorm, Freeze, FreezeBN; classes and size are filled in
	Weights      string       `json:"weights,omitempty"` // published ResNet-18 weights to start from
	// FreezeBN, when set, chooses a ResNet-18's Model.FreezeBN and
	// Model.AllBNFrozen (Resolve): FreezeBNAuto (AutoFreezeBN of
	// Model.Freeze), "true", "false" or FreezeBNAll. Resolved, it is empty:
	// run.json keeps the Model's.
	FreezeBN string       `json:"-"`
	Train    train.Config `json:"train"`
	Title    string       `json:"title,omitempty"`
	// Identity is filled in when the run starts (see Identify).
	Identity Identity `json:"identity"`
	// WorldSize is the number of data-parallel processes that trained it.
	WorldSize int `json:"world_size,omitempty"`
	// Width and Height are the size images are cached at and the model
	// sees (0: vision.Width × vision.Height, the study's 170×128).
	Width  int `json:"width,omitempty"`
	Height int `json:"height,omitempty"`
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

	onDevice *vision.DeviceImages // the cache on the device, once uploaded
}

// Close releases the cache.
func (d *Data) Close() {
	if d.onDevice != nil {
		d.onDevice.Close()
		d.onDevice = nil
	}
	d.Cache.Close()
}

// CacheOptions are the cache options of the spec; ctx stops a build.
func (s Spec) CacheOptions(ctx context.Context) vision.CacheOptions {
	return vision.CacheOptions{Dir: s.CacheDir, SkipBad: s.SkipBad, Exact: s.Exact, W: s.Width, H: s.Height,
		Limits: vision.Limits{MaxPixels: s.MaxPixels, MaxBytes: s.MaxBytes}, Context: ctx}
}

// OpenData opens the spec's dataset and cache (building it if needed; ctx
// stops a build) and reads the split from manifest when that file exists,
// else makes it (and saves it there when manifest is not empty).
func OpenData(ctx context.Context, s Spec, manifest string, h Hooks) (*Data, error) {
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
	c, err := OpenCache(ds, s.CacheOptions(ctx), h)
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
	if len(c.Bad) > 0 {
		h.logf("%d unreadable image(s) left out: %s", len(c.Bad), c.BadList(ds, 5))
	}
	return c, nil
}

// Loaders returns the train, validation and test loaders for the spec;
// shard is this rank's share in a data-parallel run (zero: everything).
// With the data on the device (see DeviceData), the cache is uploaded on
// the first call; call it on the torch thread that trains.
func (d *Data) Loaders(s Spec, device gotch.Device, shard vision.Shard, h Hooks) (trainL, valL, testL *vision.Loader, err error) {
	aug, err := vision.ParseAugment(s.Augment)
	if err != nil {
		return nil, nil, nil, err
	}
	o := vision.LoaderOptions{BatchSize: s.Train.BatchSize, Shuffle: true, Seed: s.Train.Seed, Device: device, Augment: aug, Shard: shard}
	on, why, err := DeviceData(s.DataOnDevice, device, d.Cache, aug)
	if err != nil {
		return nil, nil, nil, err
	}
	if on {
		if d.onDevice == nil || d.onDevice.Device() != device {
			start := time.Now()
			if d.onDevice != nil {
				d.onDevice.Close()
			}
			if d.onDevice, err = vision.UploadCache(d.Cache, device); err != nil {
				return nil, nil, nil, &FieldError{Field: "DataOnDevice", Err: err, Fix: "use {DataOnDevice} off", Machine: true}
			}
			h.logf("data on the device: %.0f MB uploaded to %s in %.1fs", float64(vision.DeviceBytes(d.Cache))/1e6, torch.DeviceName(device), time.Since(start).Seconds())
		}
		o.OnDevice = d.onDevice
	} else if why != "" {
		h.logf("data on the host: %s", why)
	}
	return vision.SplitLoaders(d.Set, d.Cache, d.Split, d.Scheme, o)
}

// DeviceDataFraction is the share of a GPU's memory the image cache may
// take under DataOnDevice auto.
const DeviceDataFraction = 0.4

// DeviceData decides whether the loaders gather batches from a copy of the
// cache on the device: mode on, off, or auto ("": on for a CUDA device when
// the cache takes at most DeviceDataFraction of its memory and the
// augmentation is flips only). why explains an auto that said no, when it
// is worth saying.
func DeviceData(mode string, device gotch.Device, c *vision.Cache, aug *vision.Augment) (on bool, why string, err error) {
	if err := checkDeviceData(mode, aug); err != nil {
		return false, "", err
	}
	switch mode {
	case "off":
		return false, "", nil
	case "on":
		return true, "", nil
	}
	if !device.IsCuda() {
		return false, "", nil // on the CPU the cache is already in memory
	}
	if !aug.FlipsOnly() {
		return false, "pose and colour augmentation runs on the CPU loader", nil
	}
	total, err := native.CUDAMemory(device.Value)
	if err != nil {
		return false, fmt.Sprintf("device memory unknown (%v)", err), nil
	}
	need := vision.DeviceBytes(c)
	if float64(need) > DeviceDataFraction*float64(total) {
		return false, fmt.Sprintf("the cache (%.0f MB) exceeds %.0f%% of the GPU's %.0f MB", float64(need)/1e6, 100*DeviceDataFraction, float64(total)/1e6), nil
	}
	return true, "", nil
}

// Prepare sets a model's runtime options from the spec: precision and
// memory layout.
func Prepare(m *model.Model, s Spec) error {
	p, err := model.ParsePrecision(s.Precision)
	if err != nil {
		return err
	}
	if s.ChannelsLast {
		if err := m.SetChannelsLast(true); err != nil {
			return err
		}
	}
	return m.SetPrecision(p)
}

// ReadSpec reads dir/run.json.
func ReadSpec(dir string) (Spec, error) { return Folder{dir}.ReadSpec() }

// Options configures Run.
type Options struct {
	Resume bool // continue the run in the folder
	// Reuse returns the folder's run when it is finished, continues it when
	// it is started, and starts it otherwise (reproduce's way). With a
	// Group, only rank 0 looks; use it for single processes.
	Reuse bool
	Hooks Hooks
	// Group makes this process one rank of a data-parallel run: rank 0 owns
	// the folder and the other ranks receive what they need from it.
	Group *dist.Group
}

// shared is what rank 0 tells the other ranks before training.
type shared struct {
	Identity Identity `json:"identity"`
	Split    string   `json:"split"` // one letter per record: t, v, e (test)
	// Resume is rank 0's decision, the one every rank follows: continue
	// from the folder's last checkpoint, or start from the beginning.
	Resume bool `json:"resume"`
}

// Run trains the spec's model in dir and evaluates its best checkpoint on
// the test split, writing the report. With o.Resume it continues the run
// saved in dir. Torch work runs on th. The spec is resolved first (see
// Resolve: a broken rule is a *FieldError); the folder is checked when
// rank 0 claims it, once the data is open. A run that fails before its
// first checkpoint leaves nothing behind.
func Run(ctx context.Context, th *torch.Thread, s Spec, dir string, o Options) (r *report.Run, err error) {
	if s, err = s.Resolve(); err != nil {
		return nil, err
	}
	if err := CheckMemory(s, 1); err != nil {
		return nil, err
	}
	g, h, rank := o.Group, o.Hooks, 0
	if g != nil {
		rank = g.Rank()
	}
	f := Folder{dir}
	// The other ranks open the data once rank 0 has (building the cache
	// only once on a shared machine) and take its split.
	var fromRank0 *shared
	if rank != 0 {
		if fromRank0, err = receiveData(g); err != nil {
			return nil, err
		}
	}
	d, err := OpenData(ctx, s, "", h)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	s.Identity, err = Identify(s, d)
	if err != nil {
		return nil, err
	}
	// A run the launcher restarted (torchrun's elastic agent after a
	// failure, a requeued Slurm job) continues from its last checkpoint when
	// it has one and starts afresh when it has none, without Options.Resume.
	restarted := g != nil && g.Env().Restarted
	if rank == 0 {
		var c *Claim
		if c, err = f.Claim(s.Identity, s.Train.Epochs, o.Resume || restarted, o.Reuse); err != nil {
			return nil, err
		}
		defer c.Release()
		if c.Finished != nil {
			return c.Finished, nil
		}
		switch {
		case restarted && c.Resume:
			h.logf("restart %d by the launcher: resuming from the last checkpoint in %s", g.Env().Attempt, dir)
		case (o.Resume || restarted) && !c.Resume:
			h.logf("nothing saved in %s yet: starting the run from the beginning", dir)
		}
		o.Resume = c.Resume
		defer func() {
			if _, statErr := os.Stat(f.Path(rundir.LastCheckpoint)); err != nil && statErr != nil {
				c.Clean() // failed before its first checkpoint
			}
		}()
		method, _ := vision.ParseSplitMethod(s.Split)
		if d.Split, _, err = vision.SplitWithManifest(d.Set.Records, method, s.Train.Seed, f.Path(rundir.Split)); err != nil {
			return nil, err
		}
		if g != nil {
			if err = sendData(g, s.Identity, d, o.Resume); err != nil {
				return nil, err
			}
		}
	} else {
		if err = fromRank0.apply(g.Rank(), s.Identity, d); err != nil {
			return nil, err
		}
		o.Resume = fromRank0.Resume // rank 0 decided for every rank
	}
	if g != nil {
		s.WorldSize = g.Size()
	}
	s.Model.Classes = d.Scheme.Classes()
	s.Model.Width, s.Model.Height = d.Cache.W, d.Cache.H
	s.Model.Mean, s.Model.Std = vision.Mean, vision.Std
	s.Model.ExactDecode = s.Exact // served models decode as they were trained
	if rank == 0 {
		if err := f.WriteSpec(s); err != nil {
			return nil, err
		}
	}
	if s.Weights != "" {
		s.Model.Pretrained = filepath.Base(s.Weights)
	}
	r = &report.Run{Title: s.Title, Identity: s.Identity.Key, Data: s.Data, Split: s.Split, Seed: s.Train.Seed, Augment: s.Augment, Model: s.Model, Train: s.Train}
	if s.Model.Arch == "resnet18" {
		if s.Weights == "" {
			r.Notes = append(r.Notes, "ResNet-18 trained from scratch: no published weights were given, so this is not the study's transfer learning.")
		} else {
			r.Notes = append(r.Notes, fmt.Sprintf("ResNet-18 fine-tuned from %s with freeze scenario %q (frozen BatchNorm statistics: %v).", filepath.Base(s.Weights), s.Model.Freeze, s.Model.FreezeBN))
		}
	}
	if g != nil && g.Size() > 1 {
		r.Notes = append(r.Notes, fmt.Sprintf("Trained data-parallel by %d processes (%s): batch %d per process, %d in all.", g.Size(), g.Backend(), s.Train.BatchSize, s.Train.BatchSize*g.Size()))
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
		var shard vision.Shard
		if g != nil {
			shard = vision.Shard{Rank: g.Rank(), Count: g.Size()}
		}
		trainL, valL, testL, err := d.Loaders(s, dev, shard, h)
		if err != nil {
			return err
		}
		defer trainL.Close()
		defer valL.Close()
		defer testL.Close()
		if g != nil && g.Size() > 1 {
			h.logf("train %d, validation %d, test %d images (split %s, seed %d) over %d processes (%d per process); %s on %s, batch %d per process, %d in all",
				len(trainL.Indices()), len(valL.Indices()), len(testL.Indices()), s.Split, s.Train.Seed, g.Size(), trainL.Len(), s.Model.Arch, r.Device, s.Train.BatchSize, s.Train.BatchSize*g.Size())
		} else {
			h.logf("train %d, validation %d, test %d images (split %s, seed %d); %s on %s", trainL.Len(), valL.Len(), testL.Len(), s.Split, s.Train.Seed, s.Model.Arch, r.Device)
		}
		torch.ManualSeed(int64(s.Train.Seed))
		m, err := model.New(s.Model, dev)
		if err != nil {
			return err
		}
		defer m.Close()
		if err := Prepare(m, s); err != nil {
			return err
		}
		if s.Weights != "" && rank == 0 && !o.Resume { // the other ranks get them by broadcast
			if err := weights.LoadPretrained(m, s.Weights); err != nil {
				return err
			}
			h.logf("started from %s", s.Weights)
		}
		tr := &train.Trainer{Model: m, Train: trainL, Val: valL, Config: s.Train, Dir: dir, Logf: h.Logf,
			Meta: map[string]string{"split": s.Split, "data": s.Data, "identity": s.Identity.Key}, OnBatch: h.OnBatch, OnEpoch: h.OnEpoch}
		if g != nil {
			tr.Comm = g
		}
		r.History, err = tr.Run(ctx, o.Resume)
		if err != nil {
			return err
		}
		r.BestEpoch = r.History.Best()
		mapsDir := dir
		if rank != 0 {
			mapsDir = ""
		}
		r.Test, err = evaluateCheckpoint(f.Path(rundir.BestCheckpoint), s.Model, dev, testL, d, "test", g, mapsDir)
		return err
	})
	if err != nil {
		return r, err
	}
	if rank == 0 {
		if err := report.Write(dir, r); err != nil {
			return r, err
		}
	}
	return r, nil
}

const dataKey, dataWhat = "data", "rank 0's opening of the data and the run folder"

// sendData tells the other ranks rank 0's identity, split and whether the
// run resumes.
func sendData(g *dist.Group, id Identity, d *Data, resume bool) error {
	var sb strings.Builder
	for _, sp := range d.Split {
		sb.WriteByte("tve"[sp])
	}
	b, err := json.Marshal(shared{Identity: id, Split: sb.String(), Resume: resume})
	if err != nil {
		return err
	}
	_, err = g.Share(dataKey, dataWhat, b)
	return err
}

// receiveData waits for rank 0's identity and split.
func receiveData(g *dist.Group) (*shared, error) {
	got, err := g.Share(dataKey, dataWhat, nil)
	if err != nil {
		return nil, err
	}
	var sh shared
	if err := json.Unmarshal(got, &sh); err != nil {
		return nil, fmt.Errorf("data from rank 0: %w", err)
	}
	return &sh, nil
}

// apply checks that this rank sees rank 0's dataset and settings, and takes
// rank 0's split.
func (sh *shared) apply(rank int, id Identity, d *Data) error {
	for _, part := range []string{"records", "images"} {
		if sh.Identity.Parts[part] != id.Parts[part] {
			return fmt.Errorf("rank %d's dataset differs from rank 0's (%s %s here, %s there): every rank needs the same data (and decode mode)",
				rank, part, id.Parts[part], sh.Identity.Parts[part])
		}
	}
	if sh.Identity.Key != id.Key {
		return fmt.Errorf("rank %d was started with other settings than rank 0 (%s): start every rank with the same command", rank, strings.Join(sh.Identity.Diff(id), "; "))
	}
	if len(sh.Split) != len(d.Set.Records) {
		return fmt.Errorf("split from rank 0 has %d records, this rank's dataset %d", len(sh.Split), len(d.Set.Records))
	}
	for i := range d.Split {
		d.Split[i] = vision.Split(strings.IndexByte("tve", sh.Split[i]))
	}
	return nil
}

// evaluateCheckpoint evaluates a checkpoint of a model of config cfg on l.
// In a data-parallel run rank 0 reads it and broadcasts the weights, and
// every rank evaluates its shard. With mapsDir, the class-activation maps
// of the most confident mistakes are drawn there (rundir.MistakeMaps).
// Call it on a torch thread.
func evaluateCheckpoint(path string, cfg model.Config, dev gotch.Device, l *vision.Loader, d *Data, split string, g *dist.Group, mapsDir string) (*report.Evaluation, error) {
	var m *model.Model
	classes := cfg.Classes
	if g == nil || g.Rank() == 0 {
		c, err := model.ReadCheckpoint(path)
		if err != nil {
			return nil, err
		}
		defer c.Drop()
		if m, err = model.LoadModel(c, dev); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		classes = c.Model.Classes
	} else {
		var err error
		if m, err = model.New(cfg, dev); err != nil {
			return nil, err
		}
	}
	defer m.Close()
	what := "the " + split + " evaluation"
	if g != nil {
		if err := g.Broadcast(model.Tensors(m.Named()), "the broadcast of the best weights for "+what); err != nil {
			return nil, err
		}
	}
	inf, err := model.NewInference(m) // what predict and serve run too
	if err != nil {
		return nil, err
	}
	p, err := eval.Predict(inf.Forward, l)
	inf.Close()
	if err != nil {
		return nil, err
	}
	if g != nil {
		if p, err = p.Merge(l.Indices(), l.Label, len(classes), func(v []float64) error { return g.AllReduceSum(v, "the all-reduce of "+what) }); err != nil {
			return nil, err
		}
	}
	ev := report.Evaluate(p, classes, d.Set.Records, split)
	if mapsDir != "" {
		if err := mistakeMaps(m, p, d, classes, rundir.Folder{Dir: mapsDir}.Path(rundir.MistakeMaps)); err != nil {
			return nil, fmt.Errorf("mistake maps: %w", err)
		}
		if len(ev.Mistakes) > 0 {
			ev.MistakeMaps = rundir.MistakeMaps
		}
	}
	return ev, nil
}

// mistakeMaps draws the class-activation maps (for the predicted class) of
// the 8 most confident mistakes over their cached images, as a grid.
func mistakeMaps(m *model.Model, p *eval.Predictions, d *Data, classes []string, path string) error {
	var tiles []report.Tile
	norm := vision.NewNormalizer(m.Config.Mean, m.Config.Std)
	w, h := d.Cache.W, d.Cache.H
	for _, mk := range p.ConfidentMistakes(8) {
		pix := d.Cache.Image(mk.Index)
		cam, err := func() (*model.CAM, error) {
			s := torch.NewScope()
			defer s.Close()
			in, err := vision.Input(s, norm.Batch([][]byte{pix}), w, h, m.VS.Device())
			if err != nil {
				return nil, err
			}
			return model.GradCAM(m, in, mk.Pred, model.AutoCAM)
		}()
		if err != nil {
			return err
		}
		view := vision.Fit(vision.CHW(pix, w, h), 2*max(w, h))
		if b := view.Bounds(); b.Dx() < 2*w { // upscale the small view for a readable grid
			big := image.NewRGBA(image.Rect(0, 0, 2*w, 2*h))
			xdraw.NearestNeighbor.Scale(big, big.Bounds(), view, b, xdraw.Src, nil)
			view = big
		}
		tiles = append(tiles, report.Tile{Image: vision.Overlay(view, cam.Values, cam.W, cam.H, 0.45), Caption: []string{
			d.Set.Records[mk.Index].ImageName,
			"true: " + classes[mk.Label],
			fmt.Sprintf("predicted: %s %.2f", classes[mk.Pred], mk.Confidence),
		}})
	}
	return report.Grid(path, tiles, 4)
}

// Evaluate measures a run's checkpoint ("best" or "last"; another is a
// *FieldError of Checkpoint) on a split.
func Evaluate(th *torch.Thread, dir, checkpoint, split, device string, h Hooks) (*report.Evaluation, error) {
	name := map[string]string{"best": rundir.BestCheckpoint, "last": rundir.LastCheckpoint}[checkpoint]
	if name == "" {
		return nil, &FieldError{Field: "Checkpoint", Err: errors.New("want best or last")}
	}
	f := Folder{dir}
	s, err := f.ReadSpec()
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
	manifest := f.Path(rundir.Split)
	if _, err := os.Stat(manifest); err != nil {
		return nil, fmt.Errorf("%s is missing: the run's split cannot be reproduced safely", manifest)
	}
	d, err := OpenData(context.Background(), s, manifest, h)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	if s.Identity.Key != "" {
		now, err := Identify(s, d)
		if err == nil && (now.Parts["records"] != s.Identity.Parts["records"] || now.Parts["images"] != s.Identity.Parts["images"]) {
			h.logf("warning: the dataset changed since this run was trained (%s); evaluating on it as it is now", strings.Join(s.Identity.Diff(now), "; "))
		}
	}
	var ev *report.Evaluation
	err = th.Do(func() error {
		dev, err := torch.ParseDevice(s.Device)
		if err != nil {
			return err
		}
		es := s
		es.DataOnDevice = "off" // one pass over one split: not worth an upload
		trainL, valL, testL, err := d.Loaders(es, dev, vision.Shard{}, h)
		if err != nil {
			return err
		}
		defer trainL.Close()
		defer valL.Close()
		defer testL.Close()
		l := map[vision.Split]*vision.Loader{vision.Train: trainL, vision.Val: valL, vision.Test: testL}[sp]
		// Evaluate the training split unshuffled and unaugmented too.
		if sp == vision.Train {
			l, err = vision.NewLoader(d.Cache, d.Split.Indices(vision.Train), d.Scheme.Labels(d.Set.Records), d.Scheme.MirrorLabel,
				vision.LoaderOptions{BatchSize: s.Train.BatchSize, Device: dev})
			if err != nil {
				return err
			}
			defer l.Close()
		}
		ev, err = evaluateCheckpoint(f.Path(name), s.Model, dev, l, d, sp.String(), nil, "")
		return err
	})
	return ev, err
}
