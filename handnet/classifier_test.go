package handnet_test

import (
	"bytes"
	"encoding/json"
	"image"
	"image/color"
	"image/png"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/handnet/handnet/handnet"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/torch"
	"github.com/handnet/handnet/vision"
	"github.com/sugarme/gotch"
)

// newCheckpoint saves a freshly initialised CNN as a checkpoint.
func newCheckpoint(t testing.TB, dir string) string {
	th := torch.NewThread(1)
	defer th.Close()
	path := filepath.Join(dir, "model.safetensors")
	err := th.Do(func() error {
		torch.ManualSeed(7)
		m, err := model.New(model.Config{Arch: "cnn", Dropout: model.FinalDropout, Classes: vision.Classes8.Classes(),
			Width: vision.Width, Height: vision.Height, Mean: vision.Mean, Std: vision.Std}, gotch.CPU)
		if err != nil {
			return err
		}
		return model.SaveCheckpoint(path, m, nil, map[string]string{"note": "test"})
	})
	if err != nil {
		if t == nil {
			panic(err)
		}
		t.Fatal(err)
	}
	return path
}

// testImage draws a simple pattern that differs with seed.
func testImage(seed int) image.Image {
	img := image.NewRGBA(image.Rect(0, 0, 320, 240))
	for y := 0; y < 240; y++ {
		for x := 0; x < 320; x++ {
			img.Set(x, y, color.RGBA{uint8(x*seed + y), uint8(y * seed), uint8((x + y) * (seed + 1)), 255})
		}
	}
	return img
}

func TestConcurrentPredict(t *testing.T) {
	c, err := handnet.Load(newCheckpoint(t, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 32
	want := make([]handnet.Prediction, n)
	for i := range n {
		if want[i], err = c.Predict(testImage(i % 5)); err != nil {
			t.Fatal(err)
		}
	}
	got := make([]handnet.Prediction, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = c.Predict(testImage(i % 5))
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Fatalf("goroutine %d: %+v, sequential %+v", i, got[i], want[i])
		}
	}
	batch, err := c.PredictBatch([]image.Image{testImage(0), testImage(1)})
	if err != nil || batch[0].Class != want[0].Class || batch[1].Class != want[1].Class {
		t.Fatalf("PredictBatch = %+v, %v", batch, err)
	}
	sum := 0.0
	for _, p := range want[0].Top {
		sum += p.Probability
	}
	if len(want[0].Top) != 8 || sum < 0.999 || sum > 1.001 || want[0].Top[0].Class != want[0].Class {
		t.Fatalf("top list %+v", want[0].Top)
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	good := newCheckpoint(t, dir)
	b, _ := os.ReadFile(good)
	truncated := filepath.Join(dir, "truncated.safetensors")
	os.WriteFile(truncated, b[:len(b)/2], 0o644)
	garbage := filepath.Join(dir, "garbage.safetensors")
	os.WriteFile(garbage, []byte("hello"), 0o644)
	for path, want := range map[string]string{
		truncated:                 "truncated",
		garbage:                   "too short for a safetensors file",
		filepath.Join(dir, "nop"): "no such file",
	} {
		if _, err := handnet.Load(path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Load(%s) = %v, want an error containing %q", filepath.Base(path), err, want)
		}
	}
	c, err := handnet.Load(good)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, err := c.Predict(testImage(1)); err == nil {
		t.Error("Predict after Close succeeded")
	}
}

func TestHandler(t *testing.T) {
	c, err := handnet.Load(newCheckpoint(t, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv := httptest.NewServer(c.Handler())
	defer srv.Close()
	var buf bytes.Buffer
	png.Encode(&buf, testImage(2))
	resp, err := http.Post(srv.URL, "image/png", &buf)
	if err != nil {
		t.Fatal(err)
	}
	var p handnet.Prediction
	json.NewDecoder(resp.Body).Decode(&p)
	resp.Body.Close()
	want, _ := c.Predict(testImage(2))
	if resp.StatusCode != 200 || p.Class != want.Class {
		t.Fatalf("POST png: %d %+v, want %s", resp.StatusCode, p, want.Class)
	}
	for _, tc := range []struct {
		method, body string
		code         int
	}{{"GET", "", 405}, {"POST", "not an image", 400}} {
		req, _ := http.NewRequest(tc.method, srv.URL, strings.NewReader(tc.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e map[string]string
		json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != tc.code || e["error"] == "" {
			t.Errorf("%s %q: %d %v, want %d with an error", tc.method, tc.body, resp.StatusCode, e, tc.code)
		}
	}
}
