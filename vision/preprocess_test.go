package vision

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const realSample = "../../shared/data/real-sample"

// TestPreprocessMatchesTorchvision compares with torchvision's
// Resize((128,170)) + ToTensor on the 40 real photos (reference made by
// tools/fixtures/resize_ref.py, stored in testdata/).
func TestPreprocessMatchesTorchvision(t *testing.T) {
	_, err := os.Stat(realSample)
	needShared(t, "real sample", err)
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
	needShared(t, "real sample", err)
	files := map[string][]byte{
		"empty.jpg":     {},
		"text.jpg":      []byte("hello, not a jpeg"),
		"png.jpg":       {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a},
		"truncated.jpg": good[:len(good)/2],
		"header.jpg":    good[:20],
	}
	want := map[string]string{
		"empty.jpg": "empty file", "text.jpg": "not an image handnet reads (JPEG, PNG or GIF): starts with 68 65 6c 6c",
		"png.jpg": "bad png header", "truncated.jpg": "truncated", "header.jpg": "JPEG", "missing.jpg": "no such file",
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
	needShared(t, "real sample", err)
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

// bombPNG writes a valid PNG header declaring w×h pixels (and no pixels).
func bombPNG(w, h int) []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], uint32(w))
	binary.BigEndian.PutUint32(ihdr[4:], uint32(h))
	ihdr[8], ihdr[9] = 8, 2 // 8-bit RGB
	chunk := func(typ string, data []byte) {
		binary.Write(&b, binary.BigEndian, uint32(len(data)))
		c := crc32.NewIEEE()
		c.Write([]byte(typ))
		c.Write(data)
		b.WriteString(typ)
		b.Write(data)
		binary.Write(&b, binary.BigEndian, c.Sum32())
	}
	chunk("IHDR", ihdr)
	chunk("IDAT", []byte{0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01})
	chunk("IEND", nil)
	return b.Bytes()
}

// bombJPEG takes a real JPEG and rewrites the size in its SOF header.
func bombJPEG(t *testing.T, w, h int) []byte {
	b, err := os.ReadFile(filepath.Join(realSample, "Hand_0000033.jpg"))
	if err != nil {
		var buf bytes.Buffer
		jpeg.Encode(&buf, image.NewRGBA(image.Rect(0, 0, 64, 48)), nil)
		b = buf.Bytes()
	}
	b = append([]byte(nil), b...)
	for i := 2; i+9 < len(b); {
		if b[i] != 0xFF {
			t.Fatal("lost in the JPEG markers")
		}
		m, n := b[i+1], int(b[i+2])<<8|int(b[i+3])
		if m >= 0xC0 && m <= 0xC2 {
			binary.BigEndian.PutUint16(b[i+5:], uint16(h))
			binary.BigEndian.PutUint16(b[i+7:], uint16(w))
			return b
		}
		i += 2 + n
	}
	t.Fatal("no SOF marker")
	return nil
}

func TestBudgets(t *testing.T) {
	p, _ := NewPreprocessor(Width, Height)
	dst := make([]byte, p.Size())
	start := time.Now()
	for name, b := range map[string][]byte{"png": bombPNG(20000, 20000), "jpeg": bombJPEG(t, 20000, 20000)} {
		err := p.Bytes(b, dst)
		var pe *PixelsError
		if !errors.As(err, &pe) || pe.W != 20000 || !strings.Contains(err.Error(), "400.0 megapixels) is over the budget of 64.0 megapixels") {
			t.Errorf("%s bomb: err = %v", name, err)
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("refusing two bombs took %v", d)
	}
	// A tighter budget refuses an ordinary photo; a byte budget too.
	p.Limits = Limits{MaxPixels: 1000}
	if err := p.Bytes(bombJPEG(t, 100, 100), dst); err == nil || !strings.Contains(err.Error(), "over the budget") {
		t.Errorf("100x100 under a 1000-pixel budget: %v", err)
	}
	p.Limits = Limits{MaxBytes: 100}
	if err := p.Bytes(bombJPEG(t, 10, 10), dst); err == nil || !strings.Contains(err.Error(), "bytes is over the budget of 100 bytes") {
		t.Errorf("byte budget: %v", err)
	}
	dir := t.TempDir()
	big := filepath.Join(dir, "big.jpg")
	os.WriteFile(big, make([]byte, 1000), 0o644)
	if err := p.File(big, dst); err == nil || !strings.Contains(err.Error(), "file of 1000 bytes is over the budget") {
		t.Errorf("file over the byte budget: %v", err)
	}
	if err := p.Reader(bytes.NewReader(make([]byte, 1000)), dst); err == nil || !strings.Contains(err.Error(), "more than 100 bytes") {
		t.Errorf("reader over the byte budget: %v", err)
	}
}

func TestOnlyRegularFiles(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.jpg")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	zero := filepath.Join(dir, "zero.jpg")
	if err := os.Symlink("/dev/zero", zero); err != nil {
		t.Fatal(err)
	}
	p, _ := NewPreprocessor(Width, Height)
	dst := make([]byte, p.Size())
	for name, want := range map[string]string{fifo: "a FIFO", zero: "a device", dir: "a folder"} {
		done := make(chan error, 1)
		go func() { done <- p.File(name, dst) }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "not a regular file ("+want+")") {
				t.Errorf("%s: %v", name, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: still reading after 5s", name)
		}
	}
}

// TestFormatsBySniffing: a PNG named .jpg is read as the PNG it is, and
// equals the same image as a JPEG-free decode through Image.
func TestFormatsBySniffing(t *testing.T) {
	img := image.NewRGBA(image.Rect(0, 0, 320, 240))
	for y := 0; y < 240; y++ {
		for x := 0; x < 320; x++ {
			img.Set(x, y, color.RGBA{uint8(x), uint8(y), uint8(x + y), 255})
		}
	}
	var pngBuf, gifBuf bytes.Buffer
	png.Encode(&pngBuf, img)
	gif.Encode(&gifBuf, img, nil)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "photo.jpg"), pngBuf.Bytes(), 0o644)
	p, _ := NewPreprocessor(Width, Height)
	got, want := make([]byte, p.Size()), make([]byte, p.Size())
	if err := p.File(filepath.Join(dir, "photo.jpg"), got); err != nil {
		t.Fatal(err)
	}
	if err := Image(img, Width, Height, want); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Error("a PNG named .jpg decodes differently from the image")
	}
	if err := p.Bytes(gifBuf.Bytes(), got); err != nil {
		t.Errorf("GIF: %v", err)
	}
}

// TestCMYKAndGreyJPEGs compares with PIL's RGB conversion + torchvision's
// Resize of the same files (made by tools/fixtures/golden.py).
func TestCMYKAndGreyJPEGs(t *testing.T) {
	const fixtures = "../testdata/fixtures"
	for _, name := range []string{"cmyk", "grey"} {
		data, err := os.ReadFile(filepath.Join(fixtures, name+".jpg"))
		if err != nil {
			t.Fatalf("%v (make fixtures writes it)", err)
		}
		ref, err := os.ReadFile(filepath.Join(fixtures, name+".u8"))
		if err != nil {
			t.Fatal(err)
		}
		p, _ := NewPreprocessor(Width, Height)
		p.Exact = true
		got := make([]byte, p.Size())
		if err := p.Bytes(data, got); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		sum, worst := 0, 0
		for i := range got {
			d := int(got[i]) - int(ref[i])
			if d < 0 {
				d = -d
			}
			sum += d
			worst = max(worst, d)
		}
		mae := float64(sum) / float64(len(got))
		t.Logf("%s: mean |diff| %.3f, max %d (of 255) against PIL + torchvision", name, mae, worst)
		if mae > 0.5 || worst > 3 {
			t.Errorf("%s: mean |diff| %.3f, max %d: want <= 0.5 and <= 3", name, mae, worst)
		}
	}
}
