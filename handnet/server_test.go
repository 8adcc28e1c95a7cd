package handnet_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"image/jpeg"
	"image/png"
	"io"
	"math"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handnet/handnet/handnet"
	"github.com/prometheus/client_golang/prometheus"
	log "github.com/sirupsen/logrus"
)

func jpegOf(t testing.TB, seed int) []byte {
	var b bytes.Buffer
	if err := jpeg.Encode(&b, testImage(seed), &jpeg.Options{Quality: 85}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func newTestServer(t *testing.T, o handnet.ServerOptions) (*handnet.Classifier, *httptest.Server, *bytes.Buffer) {
	c, err := handnet.LoadWith(newCheckpoint(t, t.TempDir()), handnet.Options{MaxQueue: 64})
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	o.Logger = &log.Logger{Out: &logs, Formatter: &log.JSONFormatter{}, Level: log.InfoLevel, Hooks: log.LevelHooks{}}
	s := handnet.NewServer(c, o)
	hs := httptest.NewServer(s)
	t.Cleanup(func() { hs.Close(); s.Close(); c.Close() })
	deadline := time.Now().Add(30 * time.Second)
	for !s.Ready() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	return c, hs, &logs
}

// jsonOf returns a function that reads a JSON answer (it takes an HTTP
// call's two results directly).
func jsonOf(t *testing.T) func(*http.Response, error) (int, map[string]any) {
	return func(resp *http.Response, err error) (int, map[string]any) { return readJSON(t, resp, err) }
}

func readJSON(t *testing.T, resp *http.Response, err error) (int, map[string]any) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v map[string]any
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("status %d, not JSON: %q", resp.StatusCode, b)
	}
	return resp.StatusCode, v
}

func TestServerEndpoints(t *testing.T) {
	c, hs, logs := newTestServer(t, handnet.ServerOptions{})
	getJSON := jsonOf(t)
	img := jpegOf(t, 3)
	want, err := c.PredictBytes(img)
	if err != nil {
		t.Fatal(err)
	}
	code, resp1 := getJSON(http.Post(hs.URL+"/predict?top=3", "image/jpeg", bytes.NewReader(img)))
	model, _ := resp1["model"].(map[string]any)
	one, _ := resp1["results"].([]any)
	if code != 200 || len(one) != 1 {
		t.Fatalf("POST /predict?top=3: %d %v", code, resp1)
	}
	v := one[0].(map[string]any)
	if v["file"] != "body" || v["class"] != want.Class || len(v["top"].([]any)) != 3 || model["arch"] != "cnn" || len(model["sha256"].(string)) != 64 {
		t.Fatalf("POST /predict?top=3: %d %v", code, resp1)
	}
	if p := v["probability"].(float64); math.Abs(p-want.Probability) > 1e-6 {
		t.Errorf("probability %v, PredictBytes %v", p, want.Probability)
	}
	// Several files in one multipart request, one of them not an image.
	var form bytes.Buffer
	mw := multipart.NewWriter(&form)
	for i, b := range [][]byte{img, []byte("not an image"), jpegOf(t, 4)} {
		fw, _ := mw.CreateFormFile("image", []string{"a.jpg", "b.txt", "c.jpg"}[i])
		fw.Write(b)
	}
	mw.Close()
	code, v = getJSON(http.Post(hs.URL+"/predict", mw.FormDataContentType(), &form))
	res, _ := v["results"].([]any)
	if code != 200 || len(res) != 3 {
		t.Fatalf("multipart of 3: %d %v", code, v)
	}
	r0, r1, r2 := res[0].(map[string]any), res[1].(map[string]any), res[2].(map[string]any)
	if r0["file"] != "a.jpg" || r0["class"] != want.Class || r1["error"] == nil || r1["class"] != nil || r2["class"] == nil {
		t.Errorf("multipart results: %v", res)
	}
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/nowhere": 404} {
		if code, v := getJSON(http.Get(hs.URL + path)); code != want {
			t.Errorf("GET %s: %d %v, want %d", path, code, v, want)
		}
	}
	if code, _ := getJSON(http.Post(hs.URL+"/predict?top=zero", "image/jpeg", bytes.NewReader(img))); code != 400 {
		t.Errorf("top=zero: %d", code)
	}
	// The explanation: a prediction and an overlay PNG.
	code, v = getJSON(http.Post(hs.URL+"/explain?class=female+dorsal+left", "image/jpeg", bytes.NewReader(img)))
	overlay, _ := v["overlay"].(string)
	if code != 200 || v["explained"] != "female dorsal left" || !strings.HasPrefix(overlay, "data:image/png;base64,") {
		t.Fatalf("POST /explain: %d %v", code, v["explained"])
	}
	pb, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(overlay, "data:image/png;base64,"))
	if o, err := png.Decode(bytes.NewReader(pb)); err != nil || o.Bounds().Dx() != 320 {
		t.Errorf("overlay: %v %v", err, o)
	}
	resp, err := http.Get(hs.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(page, []byte(`id="bars"`)) || bytes.Contains(page, []byte("http://")) || bytes.Contains(page, []byte("https://")) {
		t.Errorf("GET /: %d, a page with no external fetches expected", resp.StatusCode)
	}
	resp, err = http.Get(hs.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{`handnet_http_requests_total{code="200",path="/predict"} 2`, "handnet_http_request_duration_seconds_bucket", "handnet_batch_size_count",
		"handnet_queue_depth 0", "handnet_images_total 4", "handnet_images_per_second", "go_goroutines"} {
		if !bytes.Contains(metrics, []byte(m)) {
			t.Errorf("/metrics lacks %q", m)
		}
	}
	// One structured log line per request.
	var line map[string]any
	first, _, _ := strings.Cut(logs.String(), "\n")
	if err := json.Unmarshal([]byte(first), &line); err != nil || line["method"] != "POST" || line["path"] != "/predict" || line["status"] != 200.0 || line["bytes"] == nil || line["duration_ms"] == nil {
		t.Errorf("request log: %q", first)
	}
}

// TestBatchingSameAnswers: 32 concurrent clients get the answers they get
// one at a time, and the server did gather them into shared passes.
func TestBatchingSameAnswers(t *testing.T) {
	reg := prometheus.NewRegistry()
	c, hs, _ := newTestServer(t, handnet.ServerOptions{MaxBatch: 32, MaxWait: 20 * time.Millisecond, Registry: reg})
	imgs := make([][]byte, 32)
	want := make([]handnet.Prediction, 32)
	for i := range imgs {
		imgs[i] = jpegOf(t, i%7)
		p, err := c.PredictBytes(imgs[i])
		if err != nil {
			t.Fatal(err)
		}
		want[i] = p
	}
	got := make([]handnet.Prediction, 32)
	var wg sync.WaitGroup
	for i := range imgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Post(hs.URL+"/predict", "image/jpeg", bytes.NewReader(imgs[i]))
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			var r handnet.Response
			if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || len(r.Results) != 1 || r.Results[0].Prediction == nil {
				t.Errorf("image %d: %d %v %+v", i, resp.StatusCode, err, r)
				return
			}
			got[i] = *r.Results[0].Prediction
		}()
	}
	wg.Wait()
	for i := range imgs {
		if got[i].Class != want[i].Class || math.Abs(got[i].Probability-want[i].Probability) > 1e-5 {
			t.Errorf("image %d: batched %v %v, alone %s %v", i, got[i].Class, got[i].Probability, want[i].Class, want[i].Probability)
		}
	}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "handnet_batch_size" {
			h := mf.GetMetric()[0].GetHistogram()
			mean := h.GetSampleSum() / float64(h.GetSampleCount())
			t.Logf("%d forward passes for 32 requests, %.1f images each", h.GetSampleCount(), mean)
			if mean <= 1.5 {
				t.Errorf("batches of %.1f images on average: no batching", mean)
			}
		}
	}
}
