package handnet_test

import (
	"bytes"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/handnet/handnet/handnet"
)

// decodeResponse reads a POST /predict answer into handnet.Response,
// refusing fields the type does not have.
func decodeResponse(t *testing.T) func(*http.Response, error) (int, handnet.Response) {
	return func(resp *http.Response, err error) (int, handnet.Response) { return decodeOne(t, resp, err) }
}

func decodeOne(t *testing.T, resp *http.Response, err error) (int, handnet.Response) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var r handnet.Response
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		t.Fatalf("%d %s: %v", resp.StatusCode, b, err)
	}
	return resp.StatusCode, r
}

// TestPredictOneShape: one image and several get the same shape (model +
// results), the default top is DefaultTop for the server and for
// Classifier.Handler alike.
func TestPredictOneShape(t *testing.T) {
	c, hs, _ := newTestServer(t, handnet.ServerOptions{})
	img := jpegOf(t, 3)
	decode := decodeResponse(t)
	code, one := decode(http.Post(hs.URL+"/predict", "image/jpeg", bytes.NewReader(img)))
	if code != 200 || len(one.Results) != 1 || one.Results[0].Prediction == nil || one.Model.Arch != "cnn" || len(one.Model.Classes) != 8 {
		t.Fatalf("one image: %d %+v", code, one)
	}
	if r := one.Results[0]; r.File != "body" || len(r.Top) != handnet.DefaultTop || r.Top[0].Class != r.Class {
		t.Errorf("one image: result %+v, want file body and %d class(es) in top", r, handnet.DefaultTop)
	}
	var form bytes.Buffer
	mw := multipart.NewWriter(&form)
	for i, b := range [][]byte{img, jpegOf(t, 4)} {
		fw, _ := mw.CreateFormFile("image", []string{"a.jpg", "b.jpg"}[i])
		fw.Write(b)
	}
	mw.Close()
	code, two := decode(http.Post(hs.URL+"/predict?top=8", mw.FormDataContentType(), &form))
	if code != 200 || len(two.Results) != 2 || two.Results[0].File != "a.jpg" || len(two.Results[1].Top) != 8 || two.Results[0].Class != one.Results[0].Class {
		t.Errorf("two images: %d %+v", code, two)
	}
	h := httptest.NewServer(c.Handler())
	defer h.Close()
	code, plain := decode(http.Post(h.URL+"?top=2", "image/jpeg", bytes.NewReader(img)))
	if code != 200 || len(plain.Results) != 1 || len(plain.Results[0].Top) != 2 || plain.Results[0].Class != one.Results[0].Class || plain.Model.SHA256 != one.Model.SHA256 {
		t.Errorf("Classifier.Handler: %d %+v", code, plain)
	}
}

// TestWrongMethodAndFavicon: a known path with another method is 405 with
// Allow; unknown paths stay 404; the favicon is served.
func TestWrongMethodAndFavicon(t *testing.T) {
	_, hs, _ := newTestServer(t, handnet.ServerOptions{})
	for _, tt := range []struct {
		method, path string
		code         int
		allow        string
	}{
		{"GET", "/predict", 405, "POST"},
		{"PUT", "/explain", 405, "POST"},
		{"POST", "/healthz", 405, "GET, HEAD"},
		{"DELETE", "/metrics", 405, "GET, HEAD"},
		{"GET", "/nowhere", 404, ""},
		{"HEAD", "/readyz", 200, ""},
	} {
		req, _ := http.NewRequest(tt.method, hs.URL+tt.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.code || resp.Header.Get("Allow") != tt.allow {
			t.Errorf("%s %s: %d Allow %q, want %d Allow %q", tt.method, tt.path, resp.StatusCode, resp.Header.Get("Allow"), tt.code, tt.allow)
		}
		if tt.code == 405 && !strings.Contains(string(b), `"error"`) {
			t.Errorf("%s %s: body %s, want a JSON error", tt.method, tt.path, b)
		}
	}
	resp, err := http.Get(hs.URL + "/favicon.ico")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/svg+xml" || !bytes.HasPrefix(b, []byte("<svg")) {
		t.Errorf("GET /favicon.ico: %d %s %.40s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
}
