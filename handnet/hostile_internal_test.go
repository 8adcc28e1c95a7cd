package handnet

import (
	"bytes"
	"encoding/json"
	"image"
	"image/jpeg"
	"math"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/handnet/handnet/vision"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

func newTestCheckpoint(t *testing.T) string {
	path := filepath.Join(t.TempDir(), "m.safetensors")
	th := torch.NewThread(1)
	defer th.Close()
	err := th.Do(func() error {
		m, err := model.New(model.Config{Arch: "cnn", Dropout: "none", Classes: vision.Classes8.Classes(), Width: vision.Width, Height: vision.Height,
			Mean: vision.Mean, Std: vision.Std}, gotch.CPU)
		if err != nil {
			return err
		}
		defer m.Close()
		return model.SaveCheckpoint(path, m, nil, nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// testServer serves a fresh CNN checkpoint on loopback.
func testServer(t *testing.T, o Options) (*Classifier, *httptest.Server) {
	t.Helper()
	c, err := LoadWith(newTestCheckpoint(t), o)
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(c, ServerOptions{})
	hs := httptest.NewServer(s)
	t.Cleanup(func() { hs.Close(); s.Close(); c.Close() })
	for !s.Ready() {
		time.Sleep(10 * time.Millisecond)
	}
	return c, hs
}

func jpegBytes(t *testing.T) []byte {
	var b bytes.Buffer
	img := image.NewRGBA(image.Rect(0, 0, 320, 240))
	for i := range img.Pix {
		img.Pix[i] = byte(i * 7)
	}
	if err := jpeg.Encode(&b, img, nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// One request with the documented maximum of 64 images, on an idle server
// with the default two decode slots and 16 queue places: all 64 answered.
func TestServe64ImagesAdmittedWhole(t *testing.T) {
	_, hs := testServer(t, Options{Threads: 1, MaxConcurrent: 2})
	img := jpegBytes(t)
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	for i := range 64 {
		w, _ := mw.CreateFormFile("image", strings.Repeat("x", i+1)+".jpg")
		w.Write(img)
	}
	mw.Close()
	resp, err := http.Post(hs.URL+"/predict", mw.FormDataContentType(), &body)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Results []Result `json:"results"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || len(out.Results) != 64 {
		t.Fatalf("status %d with %d results, want 200 with 64", resp.StatusCode, len(out.Results))
	}
	for _, r := range out.Results {
		if r.Error != "" || r.Prediction == nil {
			t.Fatalf("%s: %q", r.File, r.Error)
		}
	}
}

// Weights that turn non-finite after load (the checkpoint itself is
// refused at load): /predict and /explain answer 500 with a JSON error,
// PredictBytes fails, never a NaN probability or an empty 200.
func TestNonFiniteOutputIsAnError(t *testing.T) {
	c, hs := testServer(t, Options{Threads: 1})
	err := c.th.Do(func() error {
		return torch.NoGrad(func() error {
			for _, nt := range c.net.Named() {
				nt.Tensor.Fill_(ts.FloatScalar(math.NaN()))
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	img := jpegBytes(t)
	if _, err := c.PredictBytes(img); err == nil || !strings.Contains(err.Error(), "not finite") {
		t.Errorf("PredictBytes: %v, want a non-finite error", err)
	}
	for _, path := range []string{"/predict", "/explain"} {
		resp, err := http.Post(hs.URL+path, "image/jpeg", bytes.NewReader(img))
		if err != nil {
			t.Fatal(err)
		}
		var v map[string]string
		err = json.NewDecoder(resp.Body).Decode(&v)
		resp.Body.Close()
		if resp.StatusCode != 500 || err != nil || !strings.Contains(v["error"], "not finite") {
			t.Errorf("%s: status %d, body %v (%v), want 500 with a JSON error naming the non-finite output", path, resp.StatusCode, v, err)
		}
	}
}
