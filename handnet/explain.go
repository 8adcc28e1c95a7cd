package handnet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"math"
	"time"

	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/torch"
	"github.com/handnet/handnet/vision"
	"github.com/sugarme/gotch/ts"
)

// Explanation is a Grad-CAM map of one image: where the network looked for
// a class (its last convolutional block, weighted by the class's gradient).
type Explanation struct {
	Prediction
	// Explained is the class explained: the prediction unless another was
	// asked for.
	Explained      string `json:"explained"`
	ExplainedIndex int    `json:"explained_index"`
	// Method is how the map was made: gradcam or hirescam.
	Method model.CAMMethod `json:"method"`
	// Map is H×W (the model's input size, row-major), in [0, 1].
	Map  []float32 `json:"-"`
	W, H int       `json:"-"`
	// View is the image as the model saw it (W×H, after preprocessing).
	View image.Image `json:"-"`
}

// Overlay blends the map over photo (scaled to at most maxSide pixels a
// side; nil: over the model's view of the image).
func (e *Explanation) Overlay(photo image.Image, maxSide int) *image.RGBA {
	if photo == nil {
		photo = e.View
	}
	return vision.Overlay(vision.Fit(photo, maxSide), e.Map, e.W, e.H, 0.45)
}

// Explain explains the network's score for class (an index; -1: the
// predicted class) on a decoded image.
func (c *Classifier) Explain(img image.Image, class int) (*Explanation, error) {
	buf, err := c.preprocess(func(p *vision.Preprocessor, dst []byte) error { return p.Image(img, dst) })
	if err != nil {
		return nil, err
	}
	return c.explain(buf, class, c.opts.CAM)
}

// ExplainFile explains an image file (decoded as PredictFile decodes it)
// and returns the photo too, for Overlay: decoded by Go's decoders when it
// has at most 16 megapixels, else the model's view.
func (c *Classifier) ExplainFile(path string, class int) (*Explanation, image.Image, error) {
	data, err := vision.Limits{MaxPixels: c.opts.MaxPixels, MaxBytes: c.opts.MaxBytes}.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	e, photo, err := c.ExplainBytes(data, class)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return e, photo, nil
}

// ExplainBytes is ExplainFile for an encoded image held in memory.
func (c *Classifier) ExplainBytes(data []byte, class int) (*Explanation, image.Image, error) {
	return c.explainBytes(data, class, c.opts.CAM)
}

func (c *Classifier) explainBytes(data []byte, class int, method model.CAMMethod) (*Explanation, image.Image, error) {
	buf, err := c.preprocess(func(p *vision.Preprocessor, dst []byte) error { return p.Bytes(data, dst) })
	if err != nil {
		return nil, nil, err
	}
	e, err := c.explain(buf, class, method)
	if err != nil {
		return nil, nil, err
	}
	// The photo, for display only (the budgets already held for the model).
	photo := e.View
	// Go's decoders hold the whole picture (8 bytes a pixel at worst); it is
	// charged to the decode memory budget, and skipped when that is short.
	if cfg, _, err := image.DecodeConfig(bytes.NewReader(data)); err == nil && int64(cfg.Width)*int64(cfg.Height) <= 16_000_000 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if release, err := vision.Charge(ctx, 8*int64(cfg.Width)*int64(cfg.Height), "photo shown under the map"); err == nil {
			if img, _, err := image.Decode(bytes.NewReader(data)); err == nil {
				photo = img
			}
			release()
		}
	}
	return e, photo, nil
}

// ClassIndex returns the index of a class name, or -1.
func (c *Classifier) ClassIndex(name string) int {
	for i, n := range c.net.Config.Classes {
		if n == name {
			return i
		}
	}
	return -1
}

// explain maps a preprocessed image, on the torch thread.
func (c *Classifier) explain(buf []byte, class int, method model.CAMMethod) (*Explanation, error) {
	cfg := c.net.Config
	if class >= len(cfg.Classes) {
		return nil, fmt.Errorf("class %d: the model has %d", class, len(cfg.Classes))
	}
	x := make([]float32, len(buf))
	c.norm.Apply(x, buf)
	var cam *model.CAM
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
		in := s.T(s.T(s.T(t).MustView([]int64{1, 3, int64(cfg.Height), int64(cfg.Width)}, false)).MustTo(c.device, false))
		cam, err = model.GradCAM(c.net, in, class, method)
		return err
	})
	if errors.Is(err, torch.ErrClosed) {
		return nil, errors.New("classifier closed")
	}
	if err != nil {
		return nil, err
	}
	if err := finite(cam.Probs, cfg.Classes, c.info.Checkpoint); err != nil {
		return nil, err
	}
	for _, v := range cam.Values {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return nil, fmt.Errorf("%w (the class-activation map); the checkpoint %s is damaged or was trained to divergence", ErrNonFinite, c.info.Checkpoint)
		}
	}
	e := &Explanation{Prediction: prediction(cfg.Classes, cam.Probs), Explained: cfg.Classes[cam.Class], ExplainedIndex: cam.Class, Method: cam.Method,
		Map: cam.Values, W: cam.W, H: cam.H, View: vision.CHW(buf, cfg.Width, cfg.Height)}
	return e, nil
}
