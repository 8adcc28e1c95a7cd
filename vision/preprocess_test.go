package vision

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"image"
	"image/jpeg"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const realSample = "../../shared/data/real-sample"

// TestPreprocessMatchesTorchvision compares with torchvision's
// Resize((128,170)) + ToTensor on the 40 real photos (reference made by
// tools/fixtures/resize_ref.py, stored in testdata/).
func TestPreprocessMatchesTorchvision(t *testing.T) {
	if _, err := os.Stat(realSample); err != nil {
		t.Skipf("real sample not here: %v", err)
	}
	names := readLines(t, "testdata/real-sample.txt")
	f, err := os.Open("testdata/real-sample.u8.gz")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	want, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPreprocessor(Width, Height)
	if err != nil {
		t.Fatal(err)
	}
	n := p.Size()
	if len(want) != len(names)*n || len(names) != 40 {
		t.Fatalf("reference holds %d bytes for %d names", len(want), len(names))
	}
	got := make([]byte, n)
	worst := 0.0
	for i, name := range names {
		if err := p.File(filepath.Join(realSample, name), got); err != nil {
			t.Fatal(err)
		}
		ref := want[i*n : (i+1)*n]
		sum := 0
		for j := range got {
			d := int(got[j]) - int(ref[j])
			if d < 0 {
				d = -d
			}
			sum += d
		}
		mae := float64(sum) / float64(n) / 255
		worst = max(worst, mae)
		if mae > 2.0/255 {
			t.Errorf("%s: mean absolute difference %.5f, want <= 2/255", name, mae)
		}
	}
	t.Logf("worst mean absolute difference over %d photos: %.6f (%.3f/255)", len(names), worst, worst*255)
}

func readLines(t *testing.T, path string) []string {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

func TestBadImages(t *testing.T) {
	dir := t.TempDir()
	good, err := os.ReadFile(filepath.Join(realSample, "Hand_0000033.jpg"))
	if err != nil {
		t.Skip(err)
	}
	files := map[string][]byte{
		"empty.jpg":     {},
		"text.jpg":      []byte("hello, not a jpeg"),
		"png.jpg":       {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a},
		"truncated.jpg": good[:len(good)/2],
		"header.jpg":    good[:20],
	}
	want := map[string]string{
		"empty.jpg": "empty file", "text.jpg": "not a JPEG", "png.jpg": "not a JPEG",
		"truncated.jpg": "truncated", "header.jpg": "JPEG", "missing.jpg": "no such file",
	}
	for name, b := range files {
		os.WriteFile(filepath.Join(dir, name), b, 0o644)
	}
	p, _ := NewPreprocessor(Width, Height)
	dst := make([]byte, p.Size())
	for name, w := range want {
		err := p.File(filepath.Join(dir, name), dst)
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("%s: err = %v, want one containing %q", name, err, w)
		}
	}
	// The decoder still works after errors.
	if err := p.Bytes(good, dst); err != nil {
		t.Fatal(err)
	}
}

// hidden hides an image's concrete type, forcing Image's generic path.
type hidden struct{ image.Image }

func TestImageFastPathMatchesGeneric(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(realSample, "Hand_0000033.jpg"))
	if err != nil {
		t.Skip(err)
	}
	img, err := jpeg.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := img.(*image.YCbCr); !ok {
		t.Fatalf("decoded to %T, want *image.YCbCr", img)
	}
	fast, slow := make([]byte, 3*Width*Height), make([]byte, 3*Width*Height)
	if err := Image(img, Width, Height, fast); err != nil {
		t.Fatal(err)
	}
	if err := Image(hidden{img}, Width, Height, slow); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(fast, slow) {
		t.Fatal("YCbCr fast path differs from the generic path")
	}
	if err := Image(img, Width, Height, fast[:10]); err == nil {
		t.Fatal("short destination accepted")
	}
}
