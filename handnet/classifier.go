// Package handnet is the library for programs that embed a trained model:
// Load a checkpoint into a Classifier, then Predict images (safe for
// concurrent use) or serve them over HTTP with Handler. The networks and the
// checkpoint format live in handnet/model; training in train.
package handnet

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/native"
	"github.com/handnet/handnet/handnet/torch"
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
	sum, err := fileSHA256(path)
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
		p.Limits = vision.Limits{MaxPixels: o.MaxPixels, MaxBytes: o.MaxBytes}
		return p
	}
	return c, nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
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
	ps, err := c.PredictBatch([]image.Image{img})
	if err != nil {
		return Prediction{}, err
	}
	return ps[0], nil
}

// PredictFile classifies an image file (JPEG, PNG or GIF, whatever its
// name says), decoded exactly as the training pipeline decodes.
func (c *Classifier) PredictFile(path string) (Prediction, error) {
	ps, err := c.PredictFiles([]string{path})
	if err != nil {
		return Prediction{}, err
	}
	return ps[0], nil
}

// PredictBytes classifies an encoded image held in memory (an upload).
func (c *Classifier) PredictBytes(data []byte) (Prediction, error) {
	buf, err := c.preprocess(func(p *vision.Preprocessor, dst []byte) error { return p.Bytes(data, dst) })
	if err != nil {
		return Prediction{}, err
	}
	ps, err := c.forward([][]byte{buf})
	if err != nil {
		return Prediction{}, err
	}
	return ps[0], nil
}

// PredictBatch classifies images in one forward pass.
func (c *Classifier) PredictBatch(imgs []image.Image) ([]Prediction, error) {
	bufs := make([][]byte, len(imgs))
	for i, img := range imgs {
		b, err := c.preprocess(func(p *vision.Preprocessor, dst []byte) error { return p.Image(img, dst) })
		if err != nil {
			return nil, fmt.Errorf("image %d: %w", i, err)
		}
		bufs[i] = b
	}
	return c.forward(bufs)
}

// PredictFiles classifies files in one forward pass; it stops at the
// first unreadable file, naming it.
func (c *Classifier) PredictFiles(paths []string) ([]Prediction, error) {
	bufs := make([][]byte, len(paths))
	for i, path := range paths {
		b, err := c.preprocess(func(p *vision.Preprocessor, dst []byte) error { return p.File(path, dst) })
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		bufs[i] = b
	}
	return c.forward(bufs)
}

// forward normalises uint8 CHW images and runs the model on the torch thread.
func (c *Classifier) forward(imgs [][]byte) ([]Prediction, error) {
	if len(imgs) == 0 {
		return nil, nil
	}
	cfg := c.net.Config
	n := len(imgs[0])
	x := make([]float32, len(imgs)*n)
	for i, img := range imgs {
		c.norm.Apply(x[i*n:(i+1)*n], img)
	}
	var probs []float32
	err := c.th.Do(func() error {
		if c.net.VS == nil {
			return torch.ErrClosed
		}
		s := torch.NewScope()
		defer s.Close()
		t, err := ts.OfSlice(x)
		if err != nil {
			return err
		}
		in := s.T(s.T(s.T(t).MustView([]int64{int64(len(imgs)), 3, int64(cfg.Height), int64(cfg.Width)}, false)).MustTo(c.device, false))
		logits, err := c.inf.Forward(in)
		if err != nil {
			return err
		}
		s.T(logits)
		return native.InferenceMode(func() error {
			p := s.T(s.T(logits.MustSoftmax(-1, gotch.Float, false)).MustTo(gotch.CPU, false))
			probs = p.Vals().([]float32)
			return nil
		})
	})
	if errors.Is(err, torch.ErrClosed) {
		return nil, errors.New("classifier closed")
	}
	if err != nil {
		return nil, err
	}
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

// MaxUpload is the default largest upload the HTTP handler accepts (the
// byte budget, Options.MaxBytes, when that is not set).
const MaxUpload = vision.DefaultMaxBytes

// gate bounds the requests that work at once and those that wait.
type gate struct {
	slots    chan struct{}
	waiting  atomic.Int64
	maxQueue int64
}

func newGate(concurrent, queue int) *gate {
	return &gate{slots: make(chan struct{}, concurrent), maxQueue: int64(queue)}
}

var errBusy = errors.New("busy: every slot is taken and the queue is full")

// enter waits for a slot, unless the queue is full (errBusy) or ctx ends.
func (g *gate) enter(ctx context.Context) (leave func(), err error) {
	select {
	case g.slots <- struct{}{}:
		return func() { <-g.slots }, nil
	default:
	}
	if g.waiting.Add(1) > g.maxQueue {
		g.waiting.Add(-1)
		return nil, errBusy
	}
	defer g.waiting.Add(-1)
	select {
	case g.slots <- struct{}{}:
		return func() { <-g.slots }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// upload reads the request's image: the body, or the "image" field of a
// multipart form, streamed into the decoder within the byte budget.
func upload(r *http.Request, read func(io.Reader) error) error {
	if strings.HasPrefix(r.Header.Get("Content-Type"), "multipart/form-data") {
		mr, err := r.MultipartReader()
		if err != nil {
			return &httpError{http.StatusBadRequest, "bad multipart upload: " + err.Error()}
		}
		for {
			part, err := mr.NextPart()
			if err == io.EOF {
				return &httpError{http.StatusBadRequest, "multipart upload without an \"image\" field"}
			}
			if err != nil {
				return &httpError{http.StatusBadRequest, "bad multipart upload: " + err.Error()}
			}
			if part.FormName() == "image" {
				return read(part)
			}
		}
	}
	return read(r.Body)
}

type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

// status maps an error to an HTTP status: over a budget 413, a bad image
// 400, busy (overload) 503, out of the time allowed 504, a non-finite
// output or anything else 500.
func status(err error) int {
	var he *httpError
	var pe *vision.PixelsError
	var be *vision.BytesError
	var me *vision.MemoryError
	var mb *http.MaxBytesError
	switch {
	case errors.As(err, &he):
		return he.code
	case errors.As(err, &pe), errors.As(err, &be), errors.As(err, &me), errors.As(err, &mb):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, os.ErrDeadlineExceeded):
		return http.StatusRequestTimeout // the client sent its body too slowly
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout // --timeout ran out while the work waited or ran
	case errors.Is(err, errBusy), errors.Is(err, context.Canceled):
		return http.StatusServiceUnavailable
	case errors.Is(err, errDecode):
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

var errDecode = errors.New("bad image")

// writeError answers {"error": msg} with the status for err.
func writeError(w http.ResponseWriter, err error) {
	code := status(err)
	if code == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	msg := strings.TrimPrefix(err.Error(), errDecode.Error()+": ")
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// Handler returns an http.Handler that classifies an uploaded image: a
// POST with the image (JPEG, PNG or GIF) as the body, or as the "image"
// field of a multipart form. The image goes through the training pipeline's
// decoder within the budgets. It answers JSON: a Response (the
// shape of Server's POST /predict: the model and one Result, ?top=K
// classes, default DefaultTop), or {"error": "..."} with status 400 (not an image), 405 (not a POST), 413 (over the
// byte, pixel or decode-memory budget), 503 with Retry-After (too many
// requests at once), 504 (over the time allowed) or 500 (a model whose
// output is not finite, or another failure). At most Options.MaxConcurrent requests
// decode and predict at once, Options.MaxQueue more wait; a body sent too
// slowly is answered 408.
func (c *Classifier) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			writeError(w, &httpError{http.StatusMethodNotAllowed, "POST an image (body or multipart field \"image\")"})
			return
		}
		k, err := topK(r, len(c.net.Config.Classes))
		if err != nil {
			writeError(w, err)
			return
		}
		name := "body"
		if strings.HasPrefix(r.Header.Get("Content-Type"), "multipart/form-data") {
			name = "image"
		}
		p, err := c.serve(w, r)
		if err != nil {
			writeError(w, err)
			return
		}
		p.Top = p.Top[:k]
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(Response{Model: c.Info(), Results: []Result{{File: name, Prediction: &p}}})
	})
}

// serve decodes one request's image and predicts it, within the gate and
// the time allowed.
func (c *Classifier) serve(w http.ResponseWriter, r *http.Request) (Prediction, error) {
	ctx, cancel := context.WithTimeout(r.Context(), c.opts.Timeout)
	defer cancel()
	// A slow client cannot hold a slot past the deadline (servers that
	// cannot set one return an error, which changes nothing).
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(c.opts.Timeout))
	leave, err := c.gate.enter(ctx)
	if err != nil {
		return Prediction{}, err
	}
	defer leave()
	maxBytes := c.opts.MaxBytes
	if maxBytes <= 0 {
		maxBytes = vision.DefaultMaxBytes
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBytes+1<<20) // the form's overhead too
	buf, err := c.preprocess(func(p *vision.Preprocessor, dst []byte) error {
		return upload(r, func(body io.Reader) error {
			if err := p.ReaderContext(ctx, body, dst); err != nil {
				var pe *vision.PixelsError
				var be *vision.BytesError
				var me *vision.MemoryError
				var mb *http.MaxBytesError
				if errors.As(err, &pe) || errors.As(err, &be) || errors.As(err, &me) || errors.As(err, &mb) || errors.Is(err, os.ErrDeadlineExceeded) {
					return err
				}
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return fmt.Errorf("%w: %v", errDecode, err)
			}
			return nil
		})
	})
	if err != nil {
		return Prediction{}, err
	}
	ps, err := c.forward([][]byte{buf})
	if err != nil {
		return Prediction{}, err
	}
	return ps[0], nil
}
