// Package handnet is the library for programs that embed a trained model:
// Load a checkpoint into a Classifier, then Predict images (safe for
// concurrent use) or serve them over HTTP with Handler. The networks and the
// checkpoint format live in handnet/model; training in train.
package handnet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	_ "image/gif" // image.Decode formats for PredictFile and the HTTP handler
	_ "image/jpeg"
	_ "image/png"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"

	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/torch"
	"github.com/handnet/handnet/vision"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// Classifier is a trained model loaded for prediction. It is safe for
// concurrent use: images are preprocessed on the calling goroutines, and
// the torch work is serialised on the classifier's own locked OS thread.
type Classifier struct {
	net    *model.Model
	th     *torch.Thread
	device gotch.Device
	pre    sync.Pool // *vision.Preprocessor
	norm   *vision.Normalizer
	closed sync.Once
}

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

// Options configures Load.
type Options struct {
	Device  string // auto (default), cpu, cuda, cuda:N
	Threads int    // intra-op CPU threads; 0 means all usable CPUs
}

// Load opens a handnet checkpoint (as written by `handnet train`) for
// prediction, on the CPU or the first GPU.
func Load(path string) (*Classifier, error) { return LoadWith(path, Options{}) }

// LoadWith is Load with options.
func LoadWith(path string, o Options) (*Classifier, error) {
	th := torch.NewThread(o.Threads)
	c := &Classifier{th: th}
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
		c.net, err = model.LoadModel(ck, dev)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		c.device = dev
		return nil
	})
	if err != nil {
		th.Close()
		return nil, err
	}
	cfg := c.net.Config
	c.norm = vision.NewNormalizer(cfg.Mean, cfg.Std)
	c.pre.New = func() any {
		p, err := vision.NewPreprocessor(cfg.Width, cfg.Height)
		if err != nil {
			return err
		}
		return p
	}
	return c, nil
}

// Classes returns the class names, index = class index.
func (c *Classifier) Classes() []string { return append([]string(nil), c.net.Config.Classes...) }

// Config returns the model's description.
func (c *Classifier) Config() model.Config { return c.net.Config }

// Close releases the classifier's thread. Later calls fail.
func (c *Classifier) Close() { c.closed.Do(c.th.Close) }

// Predict classifies a decoded image.
func (c *Classifier) Predict(img image.Image) (Prediction, error) {
	buf := make([]byte, 3*c.net.Config.Width*c.net.Config.Height)
	if err := vision.Image(img, c.net.Config.Width, c.net.Config.Height, buf); err != nil {
		return Prediction{}, err
	}
	p, err := c.forward([][]byte{buf})
	if err != nil {
		return Prediction{}, err
	}
	return p[0], nil
}

// PredictFile classifies an image file: JPEGs go through the training
// pipeline's decoder; PNG and GIF through Go's decoders.
func (c *Classifier) PredictFile(path string) (Prediction, error) {
	buf, err := c.preprocessFile(path)
	if err != nil {
		return Prediction{}, err
	}
	p, err := c.forward([][]byte{buf})
	if err != nil {
		return Prediction{}, err
	}
	return p[0], nil
}

// PredictBatch classifies images in one forward pass.
func (c *Classifier) PredictBatch(imgs []image.Image) ([]Prediction, error) {
	bufs := make([][]byte, len(imgs))
	for i, img := range imgs {
		bufs[i] = make([]byte, 3*c.net.Config.Width*c.net.Config.Height)
		if err := vision.Image(img, c.net.Config.Width, c.net.Config.Height, bufs[i]); err != nil {
			return nil, fmt.Errorf("image %d: %w", i, err)
		}
	}
	return c.forward(bufs)
}

// PredictFiles classifies files in one forward pass; it stops at the
// first unreadable file, naming it.
func (c *Classifier) PredictFiles(paths []string) ([]Prediction, error) {
	bufs := make([][]byte, len(paths))
	for i, p := range paths {
		b, err := c.preprocessFile(p)
		if err != nil {
			return nil, err
		}
		bufs[i] = b
	}
	return c.forward(bufs)
}

func (c *Classifier) preprocessFile(path string) ([]byte, error) {
	cfg := c.net.Config
	buf := make([]byte, 3*cfg.Width*cfg.Height)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) >= 2 && b[0] == 0xFF && b[1] == 0xD8 {
		v := c.pre.Get()
		p, ok := v.(*vision.Preprocessor)
		if !ok {
			return nil, v.(error)
		}
		defer c.pre.Put(p)
		if err := p.Bytes(b, buf); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return buf, nil
	}
	img, _, err := image.Decode(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("%s: not an image handnet can read (JPEG, PNG, GIF): %v", path, err)
	}
	if err := vision.Image(img, cfg.Width, cfg.Height, buf); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return buf, nil
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
		return torch.NoGrad(func() error {
			t, err := ts.OfSlice(x)
			if err != nil {
				return err
			}
			in := t.MustView([]int64{int64(len(imgs)), 3, int64(cfg.Height), int64(cfg.Width)}, true).MustTo(c.device, true)
			logits := c.net.Forward(in, false)
			in.MustDrop()
			p := logits.MustSoftmax(-1, gotch.Float, true).MustTo(gotch.CPU, true)
			probs = p.Vals().([]float32)
			p.MustDrop()
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
	out := make([]Prediction, len(imgs))
	for i := range imgs {
		top := make([]ClassProb, k)
		for j := range k {
			top[j] = ClassProb{Class: cfg.Classes[j], Probability: float64(probs[i*k+j])}
		}
		sort.SliceStable(top, func(a, b int) bool { return top[a].Probability > top[b].Probability })
		idx := 0
		for j := range k {
			if cfg.Classes[j] == top[0].Class {
				idx = j
			}
		}
		out[i] = Prediction{Class: top[0].Class, Index: idx, Probability: top[0].Probability, Top: top}
	}
	return out, nil
}

// MaxUpload is the largest image the HTTP handler accepts.
const MaxUpload = 32 << 20

// Handler returns an http.Handler that classifies an uploaded image: a
// POST with the image as the body, or as the "image" field of a multipart
// form. It answers JSON: a Prediction, or {"error": "..."} with status 400
// (bad image), 405 (not a POST) or 500.
func (c *Classifier) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fail := func(code int, msg string) {
			w.WriteHeader(code)
			json.NewEncoder(w).Encode(map[string]string{"error": msg})
		}
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			fail(http.StatusMethodNotAllowed, "POST an image (body or multipart field \"image\")")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, MaxUpload)
		var body io.Reader = r.Body
		if strings.HasPrefix(r.Header.Get("Content-Type"), "multipart/form-data") {
			f, _, err := r.FormFile("image")
			if err != nil {
				fail(http.StatusBadRequest, "multipart upload without an \"image\" field: "+err.Error())
				return
			}
			defer f.Close()
			body = f
		}
		img, _, err := image.Decode(body)
		if err != nil {
			fail(http.StatusBadRequest, "not an image (JPEG, PNG, GIF): "+err.Error())
			return
		}
		p, err := c.Predict(img)
		if err != nil {
			fail(http.StatusInternalServerError, err.Error())
			return
		}
		json.NewEncoder(w).Encode(p)
	})
}
