package handnet

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/torch"
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
	data, err := c.opts.limits().ReadFile(path)
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

// ParseClass reads the class to explain, by name or index (handnet explain
// --class, POST /explain?class=): "" is -1, each image's predicted class.
func (c *Classifier) ParseClass(v string) (int, error) {
	if v == "" {
		return -1, nil
	}
	if i := c.ClassIndex(v); i >= 0 {
		return i, nil
	}
	classes := c.net.Config.Classes
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n >= len(classes) {
		return 0, fmt.Errorf("%q: want one of %s, or an index 0-%d", v, strings.Join(classes, ", "), len(classes)-1)
	}
	return n, nil
}

// explain maps a preprocessed image, on the torch thread.
func (c *Classifier) explain(buf []byte, class int, method model.CAMMethod) (*Explanation, error) {
	cfg := c.net.Config
	if class >= len(cfg.Classes) {
		return nil, fmt.Errorf("class %d: the model has %d", class, len(cfg.Classes))
	}
	var cam *model.CAM
	err := c.onModel([][]byte{buf}, func(_ *torch.Scope, in *ts.Tensor) (err error) {
		cam, err = model.GradCAM(c.net, in, class, method)
		return err
	})
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
