// Package handnet is the library for programs that embed a trained model:
// Load a checkpoint into a Classifier, then Predict images (safe for
// concurrent use) or serve them over HTTP with Handler. The networks and the
// checkpoint format live in handnet/model; training in train.
//
// Floor 6 (study and library) of handnet's layering: it imports packages of floors 0–6 only
// (README, "Packages"; tools/floors checks it).
package handnet

import (
	"errors"
	"fmt"
	"image"
	"math"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"time"

	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/fileio"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/handnet/handnet/vision"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// Classifier is a trained model loaded for prediction. It is safe for
// concurrent use: images are decoded and preprocessed on the calling
// goroutines (with the training pipeline's decoder and the model's decode
// mode), and the torch work is serialised on the classifier's own locked
// OS thread.
type Classifier struct {
	net    *model.Model     // Explain's (Grad-CAM needs its gradients)
	inf    *model.Inference // what predictions run: BatchNorm folded, prepacked, inference mode
	th     *torch.Thread
	device gotch.Device
	opts   Options
	pre    sync.Pool // *vision.Preprocessor
	norm   *vision.Normalizer
	gate   *gate // ordinary images
	heavy  *gate // images whose decode costs Options.HeavyDecode or more
	info   ModelInfo
	closed sync.Once
}

// ModelInfo identifies the model a Classifier serves.
type ModelInfo struct {
	Checkpoint string   `json:"checkpoint"` // the file's name
	SHA256     string   `json:"sha256"`     // of the checkpoint file
	Arch       string   `json:"arch"`
	Classes    []string `json:"classes"`
	// Data is the dataset the model was trained on, from the checkpoint's
	// header ("" when the header does not say): a model trained on
	// synthetic hands (handnet demo, fakedata) says little about photos.
	Data string `json:"data,omitempty"`
}

// DefaultTop is how many classes an answer lists when the caller does not
// say (handnet predict --top, POST /predict?top=): the predicted class
// alone, the same on the command line and over HTTP.
const DefaultTop = 1

// Prediction is a classifier's answer for one image.
type Prediction struct {
	Class       string      `json:"class"`
	Index       int         `json:"index"`
	Probability float64     `json:"probability"`
	Top         []ClassProb `json:"top"` // classes by decreasing probability
}

// ClassProb is one class's probability.
type ClassProb struct {
	Class       string  `json:"class"`
	Probability float64 `json:"probability"`
}

// Options configures LoadWith.
type Options struct {
	Device  string // auto (default), cpu, cuda, cuda:N
	Threads int    // intra-op CPU threads; 0 means all usable CPUs
	// Budgets of each image decode, checked before pixels are decoded (0:
	// 64 megapixels and 32 MiB, vision.DefaultMaxPixels and DefaultMaxBytes).
	MaxPixels int64
	MaxBytes  int64
	// The HTTP handler: requests that decode and predict at once (0: the
	// number of CPUs), requests that may wait for a turn (0: 8 times that;
	// beyond, 503 with Retry-After), and the time one request may take,
	// reading its body included (0: 30 seconds; beyond, 504). Images whose
	// decode costs HeavyDecode bytes or more (0: 32 MiB, a PNG of 8
	// megapixels) take a lane of their own, one at a time with MaxConcurrent
	// waiting, so that they cannot hold the slots of ordinary photos.
	MaxConcurrent int
	MaxQueue      int
	Timeout       time.Duration
	HeavyDecode   int64
	// CAM is how Explain weighs activations by gradients (default
	// model.AutoCAM: HiResCAM for the study CNN, Grad-CAM for ResNet-18).
	CAM model.CAMMethod
}

func (o *Options) fill() {
	if o.MaxConcurrent <= 0 {
		o.MaxConcurrent = runtime.GOMAXPROCS(0)
	}
	if o.MaxQueue <= 0 {
		o.MaxQueue = 8 * o.MaxConcurrent
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	if o.HeavyDecode <= 0 {
		o.HeavyDecode = 32 << 20
	}
}

// limits are the budgets of each image decode.
func (o Options) limits() vision.Limits {
	return vision.Limits{MaxPixels: o.MaxPixels, MaxBytes: o.MaxBytes}
}

// Load opens a handnet checkpoint (as written by `handnet train`) for
// prediction, on the CPU or the first GPU.
func Load(path string) (*Classifier, error) { return LoadWith(path, Options{}) }

// LoadWith is Load with options.
func LoadWith(path string, o Options) (*Classifier, error) {
	o.fill()
	th := torch.NewThread(o.Threads)
	c := &Classifier{th: th, opts: o, gate: newGate(o.MaxConcurrent, o.MaxQueue), heavy: newGate(1, o.MaxConcurrent)}
	err := th.Do(func() error {
		dev, err := torch.ParseDevice(o.Device)
		if err != nil {
			return err
		}
		ck, err := model.ReadCheckpoint(path)
		if err != nil {
			return err
		}
		defer ck.Drop()
		c.info.Data = ck.Metadata["data"]
		c.net, err = model.LoadModel(ck, dev)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		c.device = dev
		if c.inf, err = model.NewInference(c.net); err != nil {
			c.net.Close()
			return fmt.Errorf("%s: %w", path, err)
		}
		return nil
	})
	if err != nil {
		th.Close()
		return nil, err
	}
	cfg := c.net.Config
	sum, err := fileio.SHA256(path)
	if err != nil {
		c.Close()
		return nil, err
	}
	c.info = ModelInfo{Checkpoint: filepath.Base(path), SHA256: sum, Arch: cfg.Arch, Classes: append([]string(nil), cfg.Classes...), Data: c.info.Data}
	c.norm = vision.NewNormalizer(cfg.Mean, cfg.Std)
	c.pre.New = func() any {
		p, err := vision.NewPreprocessor(cfg.Width, cfg.Height)
		if err != nil {
			return err
		}
		p.Exact = cfg.ExactDecode
		p.Limits = o.limits()
		return p
	}
	return c, nil
}

// Info identifies the model: checkpoint file, its SHA-256, architecture
// and classes.
func (c *Classifier) Info() ModelInfo { return c.info }

// Classes returns the class names, index = class index.
func (c *Classifier) Classes() []string { return append([]string(nil), c.net.Config.Classes...) }

// Config returns the model's description.
func (c *Classifier) Config() model.Config { return c.net.Config }

// Close frees the model and stops the classifier's thread. Later calls
// fail; Close is safe to call twice.
func (c *Classifier) Close() {
	c.closed.Do(func() {
		c.th.Do(func() error { c.inf.Close(); c.net.Close(); return nil })
		c.th.Close()
	})
}

// preprocess runs fn with a pooled Preprocessor into a new image buffer.
func (c *Classifier) preprocess(fn func(p *vision.Preprocessor, dst []byte) error) ([]byte, error) {
	v := c.pre.Get()
	p, ok := v.(*vision.Preprocessor)
	if !ok {
		return nil, v.(error)
	}
	defer c.pre.Put(p)
	buf := make([]byte, p.Size())
	if err := fn(p, buf); err != nil {
		return nil, err
	}
	return buf, nil
}

// Predict classifies a decoded image.
func (c *Classifier) Predict(img image.Image) (Prediction, error) {
	return first(c.PredictBatch([]image.Image{img}))
}

// PredictFile classifies an image file (JPEG, PNG or GIF, whatever its
// name says), decoded exactly as the training pipeline decodes.
func (c *Classifier) PredictFile(path string) (Prediction, error) {
	return first(c.PredictFiles([]string{path}))
}

// PredictBytes classifies an encoded image held in memory (an upload).
func (c *Classifier) PredictBytes(data []byte) (Prediction, error) {
	return first(predictAll(c, [][]byte{data}, nil, (*vision.Preprocessor).Bytes))
}

// PredictBatch classifies images in one forward pass.
func (c *Classifier) PredictBatch(imgs []image.Image) ([]Prediction, error) {
	return predictAll(c, imgs, func(i int) string { return fmt.Sprintf("image %d", i) }, (*vision.Preprocessor).Image)
}

// PredictFiles classifies files in one forward pass; it stops at the
// first unreadable file, naming it.
func (c *Classifier) PredictFiles(paths []string) ([]Prediction, error) {
	return predictAll(c, paths, func(i int) string { return paths[i] }, (*vision.Preprocessor).File)
}

// predictAll preprocesses each input with prep and classifies them all in
// one forward pass; it stops at the first that fails, naming it with
// name(i) (nil: the error alone).
func predictAll[T any](c *Classifier, in []T, name func(i int) string, prep func(p *vision.Preprocessor, x T, dst []byte) error) ([]Prediction, error) {
	bufs := make([][]byte, len(in))
	for i, x := range in {
		b, err := c.preprocess(func(p *vision.Preprocessor, dst []byte) error { return prep(p, x, dst) })
		if err != nil {
			if name == nil {
				return nil, err
			}
			return nil, fmt.Errorf("%s: %w", name(i), err)
		}
		bufs[i] = b
	}
	return c.forward(bufs)
}

// first is the one answer of a batch of one.
func first(ps []Prediction, err error) (Prediction, error) {
	if err != nil {
		return Prediction{}, err
	}
	return ps[0], nil
}

// forward runs the model on uint8 CHW images.
func (c *Classifier) forward(imgs [][]byte) ([]Prediction, error) {
	if len(imgs) == 0 {
		return nil, nil
	}
	var probs []float32
	err := c.onModel(imgs, func(s *torch.Scope, in *ts.Tensor) error {
		p, err := c.inf.Probs(in)
		if err != nil {
			return err
		}
		probs = s.T(s.T(p).MustTo(gotch.CPU, false)).Vals().([]float32)
		return nil
	})
	if err != nil {
		return nil, err
	}
	cfg := c.net.Config
	k := len(cfg.Classes)
	if err := finite(probs, cfg.Classes, c.info.Checkpoint); err != nil {
		return nil, err
	}
	out := make([]Prediction, len(imgs))
	for i := range imgs {
		out[i] = prediction(cfg.Classes, probs[i*k:(i+1)*k])
	}
	return out, nil
}

// onModel normalises uint8 CHW images (on the calling goroutine) and runs
// fn on the torch thread with them as the model's input, an N×3×H×W tensor
// on its device; fn's tensors go in s. After Close it fails.
func (c *Classifier) onModel(imgs [][]byte, fn func(s *torch.Scope, in *ts.Tensor) error) error {
	cfg := c.net.Config
	x := c.norm.Batch(imgs)
	err := c.th.Do(func() error {
		if c.net.VS == nil {
			return torch.ErrClosed
		}
		s := torch.NewScope()
		defer s.Close()
		in, err := vision.Input(s, x, cfg.Width, cfg.Height, c.device)
		if err != nil {
			return err
		}
		return fn(s, in)
	})
	if errors.Is(err, torch.ErrClosed) {
		return errors.New("classifier closed")
	}
	return err
}

func prediction(classes []string, probs []float32) Prediction {
	top := make([]ClassProb, len(classes))
	best := 0
	for j := range classes {
		top[j] = ClassProb{Class: classes[j], Probability: float64(probs[j])}
		if probs[j] > probs[best] {
			best = j
		}
	}
	sort.SliceStable(top, func(a, b int) bool { return top[a].Probability > top[b].Probability })
	return Prediction{Class: classes[best], Index: best, Probability: float64(probs[best]), Top: top}
}

// ErrNonFinite is a forward pass whose output holds NaN or ±Inf: an error
// (HTTP 500, exit 1), never a NaN probability.
var ErrNonFinite = errors.New("the model's output is not finite")

// finite checks softmax outputs, k classes an image.
func finite(probs []float32, classes []string, ckpt string) error {
	k := len(classes)
	for i, v := range probs {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return fmt.Errorf("%w (image %d of the batch, class %s: %v); the checkpoint %s is damaged or was trained to divergence",
				ErrNonFinite, i/k, classes[i%k], v, ckpt)
		}
	}
	return nil
}
