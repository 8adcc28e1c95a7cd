package weights

import (
	"archive/zip"
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestPickleBombRefused: a ~40 KB deflated torch.save archive whose
// data.pkl is a deep list (40 MB of EMPTY_LIST/APPEND opcodes) is refused
// without unpickling it, in the file format's words, and reading it takes
// far less than the 500 MB the issue allows.
func TestPickleBombRefused(t *testing.T) {
	var pkl bytes.Buffer
	pkl.WriteString("\x80\x02]")
	for range 20_000_000 {
		pkl.WriteString("]a"[:1]) // EMPTY_LIST …
	}
	for range 20_000_000 - 1 {
		pkl.WriteByte('a') // … APPEND
	}
	pkl.WriteString("a.")
	var zb bytes.Buffer
	zw := zip.NewWriter(&zb)
	w, _ := zw.CreateHeader(&zip.FileHeader{Name: "archive/data.pkl", Method: zip.Deflate})
	w.Write(pkl.Bytes())
	zw.Close()
	path := filepath.Join(t.TempDir(), "bomb.pth")
	if err := os.WriteFile(path, zb.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d bytes on disk, %d bytes of pickle", zb.Len(), pkl.Len())
	pkl = bytes.Buffer{}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := readPyTorch(path)
	runtime.ReadMemStats(&after)
	if err == nil || !strings.Contains(err.Error(), "pickle bomb") {
		t.Fatalf("got %v, want a refusal as a pickle bomb", err)
	}
	if strings.Contains(err.Error(), "types.") || strings.Contains(err.Error(), "*") {
		t.Errorf("error names a Go type: %v", err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 200<<20 {
		t.Errorf("reading it allocated %d MB, want under 200", alloc>>20)
	}
	t.Log(err)
}

// A pickle that holds a list, not a dict: the error says so in Python's
// words.
func TestNotAStateDictInPythonWords(t *testing.T) {
	var zb bytes.Buffer
	zw := zip.NewWriter(&zb)
	w, _ := zw.Create("archive/data.pkl")
	w.Write([]byte("\x80\x02]K\x01a."))
	zw.Close()
	path := filepath.Join(t.TempDir(), "list.pth")
	os.WriteFile(path, zb.Bytes(), 0o644)
	_, err := readPyTorch(path)
	if err == nil || !strings.Contains(err.Error(), "holds a list, not a state dict") {
		t.Fatalf("got %v, want \"holds a list, not a state dict\"", err)
	}
}
