package handnet_test

import (
	"bytes"
	"encoding/json"
	"image/jpeg"
	"image/png"
	"mime/multipart"
	"net/http/httptest"
	"os"
	"testing"

	"github.com/handnet/handnet/handnet"
)

// FuzzHandler: no upload crashes the HTTP handler; every answer is JSON
// with a status a client can act on.
func FuzzHandler(f *testing.F) {
	var j, p bytes.Buffer
	jpeg.Encode(&j, testImage(1), &jpeg.Options{Quality: 70})
	png.Encode(&p, testImage(2))
	var form bytes.Buffer
	mw := multipart.NewWriter(&form)
	fw, _ := mw.CreateFormFile("image", "x.jpg")
	fw.Write(j.Bytes())
	mw.Close()
	f.Add(j.Bytes(), "image/jpeg")
	f.Add(p.Bytes(), "")
	f.Add(form.Bytes(), mw.FormDataContentType())
	f.Add([]byte("--x\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\n\xff\xd8\xff"), "multipart/form-data; boundary=x")
	f.Add(bombPNG(f, 2000, 20000), "image/png")
	if b, err := os.ReadFile("../testdata/fixtures/cmyk.jpg"); err == nil {
		f.Add(b, "image/jpeg")
	}
	c, err := handnet.LoadWith(newCheckpoint(f, f.TempDir()), handnet.Options{Threads: 1, MaxPixels: 4_000_000})
	if err != nil {
		f.Fatal(err)
	}
	defer c.Close()
	h := c.Handler()
	f.Fuzz(func(t *testing.T, body []byte, contentType string) {
		req := httptest.NewRequest("POST", "/predict", bytes.NewReader(body))
		req.Header.Set("Content-Type", contentType)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		switch w.Code {
		case 200, 400, 408, 413, 503, 504:
		default:
			t.Fatalf("status %d: %s", w.Code, w.Body.String())
		}
		var v map[string]any
		if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil {
			t.Fatalf("status %d with a body that is not JSON: %q", w.Code, w.Body.String())
		}
	})
}
