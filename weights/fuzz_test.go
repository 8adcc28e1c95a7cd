package weights

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sugarme/gotch/ts"
)

// TestTinyStateDicts reads a small state dict in both formats, a
// transposed (strided) tensor and a BatchNorm counter (a 0-dim tensor)
// included.
func TestTinyStateDicts(t *testing.T) {
	for _, name := range []string{"tiny.pth", "tiny-legacy.pth"} {
		tensors, err := readPyTorch(filepath.Join(fixtureDir(), name))
		if err != nil {
			t.Fatalf("%s: %v (make fixtures writes it)", name, err)
		}
		got := tensors["t"].Vals().([]float32)
		if !reflect.DeepEqual(got, []float32{0, 3, 1, 4, 2, 5}) || !reflect.DeepEqual(tensors["t"].MustSize(), []int64{3, 2}) {
			t.Errorf("%s: t = %v %v, want the transpose of arange(6).reshape(2,3)", name, tensors["t"].MustSize(), got)
		}
		if n := tensors["1.num_batches_tracked"]; n == nil || len(n.MustSize()) != 0 || n.Int64Values()[0] != 0 {
			t.Errorf("%s: num_batches_tracked = %v", name, n)
		}
		if len(tensors) != 8 {
			t.Errorf("%s: %d tensors, want 8", name, len(tensors))
		}
		for _, x := range tensors {
			x.MustDrop()
		}
	}
}

// FuzzReadPyTorch: no file makes the PyTorch reader crash, hang or
// allocate past its input; errors are one line.
func FuzzReadPyTorch(f *testing.F) {
	for _, name := range []string{"tiny.pth", "tiny-legacy.pth"} {
		if b, err := os.ReadFile(filepath.Join(fixtureDir(), name)); err == nil {
			f.Add(b)
			f.Add(b[:len(b)/2])
		}
	}
	f.Add([]byte{})
	f.Add([]byte("PK\x03\x04"))
	f.Add([]byte{0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e})
	// A pickle declaring 2^40 bytes of unicode.
	f.Add([]byte{0x80, 0x02, 0x8d, 0, 0, 0, 0, 0, 1, 0, 0, 0x2e})
	p := filepath.Join(f.TempDir(), "w.pth")
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		type res struct {
			tensors map[string]*ts.Tensor
			err     error
		}
		done := make(chan res, 1)
		go func() { x, err := readPyTorch(p); done <- res{x, err} }()
		var r res
		select {
		case r = <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("reading %d bytes took over 10s: % x", len(b), b[:min(len(b), 64)])
		}
		tensors, err := r.tensors, r.err
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error of more than one line: %q", err)
			}
			return
		}
		for _, x := range tensors {
			x.MustDrop()
		}
	})
}

// fixtureDir is where `make fixtures` writes (HANDNET_FIXTURES overrides).
func fixtureDir() string {
	if d := os.Getenv("HANDNET_FIXTURES"); d != "" {
		return d
	}
	return filepath.Join("..", "testdata", "fixtures")
}
