package handnet_test

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"encoding/json"
	"hash/crc32"
	"image"
	"image/color"
	"image/png"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handnet/handnet/handnet"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/torch"
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
		return model.SaveCheckpoint(path, m, nil, map[string]string{"note": "test", "data": "testdata/synthetic-hands"})
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
	var r handnet.Response
	json.NewDecoder(resp.Body).Decode(&r)
	resp.Body.Close()
	want, _ := c.Predict(testImage(2))
	if resp.StatusCode != 200 || len(r.Results) != 1 || r.Results[0].Prediction == nil || r.Results[0].Class != want.Class {
		t.Fatalf("POST png: %d %+v, want %s", resp.StatusCode, r, want.Class)
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

// bombPNG streams a real PNG of w×h black pixels (it compresses ~1000:1):
// 20000×20000 is about 1.2 MB and 400 megapixels.
func bombPNG(t testing.TB, w, h int) []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	chunk := func(typ string, data []byte) {
		binary.Write(&b, binary.BigEndian, uint32(len(data)))
		c := crc32.NewIEEE()
		c.Write([]byte(typ))
		c.Write(data)
		b.WriteString(typ)
		b.Write(data)
		binary.Write(&b, binary.BigEndian, c.Sum32())
	}
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], uint32(w))
	binary.BigEndian.PutUint32(ihdr[4:], uint32(h))
	ihdr[8], ihdr[9] = 8, 0 // 8-bit grey
	chunk("IHDR", ihdr)
	var z bytes.Buffer
	zw, _ := zlib.NewWriterLevel(&z, zlib.BestCompression)
	row := make([]byte, w+1)
	for range h {
		zw.Write(row)
	}
	zw.Close()
	chunk("IDAT", z.Bytes())
	chunk("IEND", nil)
	return b.Bytes()
}

func rssMiB() float64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			kb, _ := strconv.ParseFloat(strings.Fields(l)[1], 64)
			return kb / 1024
		}
	}
	return 0
}

var (
	bombOnce sync.Once
	bomb     []byte
)

// TestHandlerBombs posts a 20000x20000 PNG: refused (413) from its header in
// well under a second; 64 at once leave the process well under 1 GB.
func TestHandlerBombs(t *testing.T) {
	bombOnce.Do(func() { bomb = bombPNG(t, 20000, 20000) })
	c, err := handnet.Load(newCheckpoint(t, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv := httptest.NewServer(c.Handler())
	defer srv.Close()
	runtime.GC()
	before := rssMiB()
	start := time.Now()
	resp, err := http.Post(srv.URL, "image/png", bytes.NewReader(bomb))
	if err != nil {
		t.Fatal(err)
	}
	var e map[string]string
	json.NewDecoder(resp.Body).Decode(&e)
	resp.Body.Close()
	took := time.Since(start)
	if resp.StatusCode != 413 || !strings.Contains(e["error"], "20000x20000 pixels") {
		t.Fatalf("bomb (%d KB): %d %v", len(bomb)>>10, resp.StatusCode, e)
	}
	if took > 500*time.Millisecond {
		t.Errorf("refusing the bomb took %v", took)
	}
	var wg sync.WaitGroup
	codes := make([]int, 64)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Post(srv.URL, "image/png", bytes.NewReader(bomb))
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			codes[i] = resp.StatusCode
		}()
	}
	wg.Wait()
	after := rssMiB()
	for i, code := range codes {
		if code != 413 && code != 503 {
			t.Errorf("request %d: %d, want 413 (or 503: busy)", i, code)
		}
	}
	t.Logf("%d KB bomb refused in %v; RSS %.0f MiB before, %.0f MiB after 64 concurrent bombs", len(bomb)>>10, took, before, after)
	if after-before > 300 || !raceDetector && after > 1024 {
		t.Errorf("RSS %.0f MiB after 64 bombs (from %.0f)", after, before)
	}
}

// TestHandlerMatchesPredictFile: an upload and the file on disk go through
// the same decoder: identical probabilities, for an RGB and a CMYK JPEG.
func TestHandlerMatchesPredictFile(t *testing.T) {
	c, err := handnet.Load(newCheckpoint(t, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv := httptest.NewServer(c.Handler())
	defer srv.Close()
	files := []string{"../testdata/fixtures/cmyk.jpg", "../testdata/fixtures/grey.jpg"}
	if _, err := os.Stat(realSample); err == nil {
		files = append(files, filepath.Join(realSample, "Hand_0000033.jpg"))
	}
	for _, f := range files {
		want, err := c.PredictFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(f)
		resp, err := http.Post(srv.URL+"?top=8", "image/jpeg", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		var r handnet.Response
		json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		var got handnet.Prediction
		if len(r.Results) == 1 && r.Results[0].Prediction != nil {
			got = *r.Results[0].Prediction
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: handler %+v, PredictFile %+v", f, got, want)
		}
	}
}

// TestHandlerBusyAndSlow: with one slot and one queue place, a third
// request while two are in is refused (503, Retry-After); a client that
// sends its body too slowly gets 408.
func TestHandlerBusyAndSlow(t *testing.T) {
	c, err := handnet.LoadWith(newCheckpoint(t, t.TempDir()), handnet.Options{MaxConcurrent: 1, MaxQueue: 1, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv := httptest.NewServer(c.Handler())
	defer srv.Close()
	// Two slow uploads hold the slot and the queue place.
	var slow []*io.PipeWriter
	results := make(chan int, 2)
	for range 2 {
		pr, pw := io.Pipe()
		slow = append(slow, pw)
		go func() {
			resp, err := http.Post(srv.URL, "image/jpeg", pr)
			if err != nil {
				results <- 0
				return
			}
			resp.Body.Close()
			results <- resp.StatusCode
		}()
		pw.Write([]byte{0xFF, 0xD8, 0xFF})
		time.Sleep(100 * time.Millisecond)
	}
	resp, err := http.Post(srv.URL, "image/png", bytes.NewReader([]byte("x")))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("third request: %d (Retry-After %q), want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	// The slow ones run out of time.
	got := []int{<-results, <-results}
	sort.Ints(got)
	for _, pw := range slow {
		pw.Close()
	}
	if got[0] != 408 && got[0] != 504 || got[1] != 408 && got[1] != 504 {
		t.Errorf("slow uploads: %v, want 408 or 504", got)
	}
}

const realSample = "../../shared/data/real-sample"
