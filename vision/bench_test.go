package vision

import (
	"bytes"
	"image"
	"image/jpeg"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/sugarme/gotch"
	"golang.org/x/image/draw"
)

var (
	bigOnce sync.Once
	bigJPEG [][]byte
	bigErr  error
)

// bigJPEGs returns a few synthetic hands at the real photos' 1600×1200.
func bigJPEGs(tb testing.TB) [][]byte {
	bigOnce.Do(func() {
		dir, err := os.MkdirTemp("", "handnet-big")
		if err != nil {
			bigErr = err
			return
		}
		defer os.RemoveAll(dir)
		if bigErr = GenerateFake(dir, FakeOptions{Count: 8, Seed: 5, PerSubject: 2}); bigErr != nil {
			return
		}
		files, _ := filepath.Glob(filepath.Join(dir, ImagesDir, "*.jpg"))
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				bigErr = err
				return
			}
			bigJPEG = append(bigJPEG, b)
		}
	})
	if bigErr != nil {
		tb.Fatal(bigErr)
	}
	return bigJPEG
}

// TestFastPathMatchesExact: DCT-scaled decoding stays within 1/255 (mean
// absolute difference) of decoding at full size, on 1600×1200 photos.
func TestFastPathMatchesExact(t *testing.T) {
	fast, _ := NewPreprocessor(Width, Height)
	exact, _ := NewPreprocessor(Width, Height)
	exact.Exact = true
	a, b := make([]byte, fast.Size()), make([]byte, fast.Size())
	for i, j := range bigJPEGs(t)[:4] {
		if err := fast.Bytes(j, a); err != nil {
			t.Fatal(err)
		}
		if err := exact.Bytes(j, b); err != nil {
			t.Fatal(err)
		}
		sum := 0
		for k := range a {
			d := int(a[k]) - int(b[k])
			sum += max(d, -d)
		}
		if mae := float64(sum) / float64(len(a)); mae > 1 {
			t.Errorf("image %d: fast path differs from exact by %.3f/255 on average", i, mae)
		}
	}
}

// BenchmarkDecode: decode + preprocess of 1600×1200 JPEGs on one core:
// libjpeg-turbo with DCT scaling + PIL-exact resize, against Go's
// image/jpeg + x/image/draw's bilinear scaler.
func BenchmarkDecode(b *testing.B) {
	jpegs := bigJPEGs(b)
	turbo := func(exact bool) func(b *testing.B) {
		return func(b *testing.B) {
			p, _ := NewPreprocessor(Width, Height)
			p.Exact = exact
			dst := make([]byte, p.Size())
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := p.Bytes(jpegs[i%len(jpegs)], dst); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "images/s")
		}
	}
	b.Run("fast", turbo(false))
	b.Run("exact", turbo(true))
	b.Run("go-stdlib", func(b *testing.B) {
		dst := make([]byte, 3*Width*Height)
		rgba := image.NewRGBA(image.Rect(0, 0, Width, Height))
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			img, err := jpeg.Decode(bytes.NewReader(jpegs[i%len(jpegs)]))
			if err != nil {
				b.Fatal(err)
			}
			draw.BiLinear.Scale(rgba, rgba.Rect, img, img.Bounds(), draw.Src, nil)
			for c := range 3 {
				for k := 0; k < Width*Height; k++ {
					dst[c*Width*Height+k] = rgba.Pix[4*k+c]
				}
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "images/s")
	})
}

// BenchmarkLoader: the loader alone on a warm cache, batches of 16,
// normalised float32 on the CPU.
func BenchmarkLoader(b *testing.B) {
	ds, c := openFakeCache(b)
	labels := Classes8.Labels(ds.Records)
	l, err := NewLoader(c, allIndices(len(ds.Records)), labels, nil, LoaderOptions{BatchSize: 16, Shuffle: true, Device: gotch.CPU})
	if err != nil {
		b.Fatal(err)
	}
	images := 0
	b.ResetTimer()
	for epoch := 0; images < b.N; epoch++ {
		e := l.Epoch(epoch, 0)
		for {
			batch, err := e.Next()
			if err != nil {
				b.Fatal(err)
			}
			if batch == nil {
				break
			}
			images += len(batch.Indices)
			batch.Drop()
		}
		e.Close()
	}
	b.ReportMetric(float64(images)/b.Elapsed().Seconds(), "images/s")
}
