package weights

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestNameHash(t *testing.T) {
	for name, want := range map[string]string{
		"resnet18-f37072fd.pth":                  "f37072fd",
		"/x/resnet50-0676ba61.pth":               "0676ba61",
		"model.pth":                              "",
		"resnet18-xyz.pth":                       "",
		"best.safetensors":                       "",
		"efficientnet_b0_rwightman-7f5810bc.pth": "7f5810bc",
	} {
		if got := NameHash(name); got != want {
			t.Errorf("NameHash(%q) = %q, want %q", name, got, want)
		}
	}
}

// server serves content under /models/NAME, honouring Range requests; when
// cut is set, the first full request is cut off half-way.
var lastRange atomic.Value

func server(t *testing.T, name string, content []byte, cut bool) (*httptest.Server, *atomic.Int32) {
	var requests atomic.Int32
	var cutDone atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		lastRange.Store(r.Header.Get("Range"))
		if r.URL.Path != "/models/"+name {
			http.NotFound(w, r)
			return
		}
		if cut && r.Header.Get("Range") == "" && !cutDone.Swap(true) {
			w.Header().Set("Content-Length", strconv.Itoa(len(content)))
			w.WriteHeader(http.StatusOK)
			w.Write(content[:len(content)/2])
			panic(http.ErrAbortHandler) // drop the connection mid-body
		}
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(content))
	}))
	t.Cleanup(srv.Close)
	return srv, &requests
}

func hashedName(content []byte) string {
	s := sha256.Sum256(content)
	return "tiny-" + hex.EncodeToString(s[:])[:8] + ".pth"
}

func TestFetchResumesAndVerifies(t *testing.T) {
	content := bytes.Repeat([]byte("handnet weights "), 50000)
	name := hashedName(content)
	srv, requests := server(t, name, content, true)
	dir := t.TempDir()
	url := srv.URL + "/models/" + name
	_, err := Fetch(context.Background(), url, dir, nil)
	if err == nil {
		t.Fatal("a cut-off download reported success")
	}
	fi, err2 := os.Stat(filepath.Join(dir, name+".part"))
	if err2 != nil || fi.Size() == 0 || fi.Size() >= int64(len(content)) {
		t.Fatalf("partial file after the cut: %v, %v", fi, err2)
	}
	var last int64
	p, err := Fetch(context.Background(), url, dir, func(done, total int64) { last = done })
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(p)
	if want := "bytes=" + strconv.FormatInt(fi.Size(), 10) + "-"; lastRange.Load() != want {
		t.Errorf("resume asked for range %q, want %q", lastRange.Load(), want)
	}
	if !bytes.Equal(got, content) || last != int64(len(content)) {
		t.Fatalf("resumed file has %d bytes (progress %d), want %d", len(got), last, len(content))
	}
	if _, err := os.Stat(p + ".part"); !os.IsNotExist(err) {
		t.Error("partial file left behind")
	}
	// A second fetch finds the verified file and asks the server nothing.
	n := requests.Load()
	if _, err := Fetch(context.Background(), url, dir, nil); err != nil || requests.Load() != n {
		t.Fatalf("second fetch: err %v, %d new requests", err, requests.Load()-n)
	}
}

func TestFetchRejectsWrongHash(t *testing.T) {
	content := []byte("not what the name promises")
	name := "resnet18-f37072fd.pth"
	srv, _ := server(t, name, content, false)
	dir := t.TempDir()
	_, err := Fetch(context.Background(), srv.URL+"/models/"+name, dir, nil)
	if err == nil || !strings.Contains(err.Error(), "f37072fd") {
		t.Fatalf("err = %v, want a hash mismatch naming f37072fd", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("files left after a bad download: %v", entries)
	}
	if _, err := Fetch(context.Background(), srv.URL+"/models/missing.pth", dir, nil); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("missing file: err = %v", err)
	}
}

func TestVerifyLocalFile(t *testing.T) {
	dir := t.TempDir()
	content := []byte("abc")
	good := filepath.Join(dir, hashedName(content))
	os.WriteFile(good, content, 0o644)
	if err := Verify(good, ""); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "resnet18-f37072fd.pth")
	os.WriteFile(bad, content, 0o644)
	if err := Verify(bad, ""); err == nil {
		t.Fatal("corrupt file passed")
	}
	if _, err := Read(bad); err == nil {
		t.Fatal("Read accepted a corrupt file")
	}
}
