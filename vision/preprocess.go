package vision

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	_ "image/gif" // formats the Preprocessor decodes with Go's decoders
	_ "image/png"
	"io"
	"math"
	"os"
	"syscall"
)

// Input size of the study's models: 170×128 (W×H), as torchvision's
// Resize((128, 170)).
const (
	Width  = 170
	Height = 128
)

// ImageNet normalisation, per RGB channel.
var (
	Mean = [3]float32{0.485, 0.456, 0.406}
	Std  = [3]float32{0.229, 0.224, 0.225}
)

// Normalizer turns uint8 CHW pixels into float32, (v/255 − mean)/std per
// channel in float32 arithmetic: exactly torchvision's ToTensor followed
// by Normalize. It is a lookup table, safe for concurrent use.
type Normalizer struct{ lut [3][256]float32 }

// NewNormalizer returns a Normalizer for per-channel mean and std.
func NewNormalizer(mean, std [3]float32) *Normalizer {
	n := &Normalizer{}
	for c := range 3 {
		for v := range 256 {
			n.lut[c][v] = (float32(v)/255 - mean[c]) / std[c]
		}
	}
	return n
}

// Apply normalises one image: src holds three planes, dst as many floats.
func (n *Normalizer) Apply(dst []float32, src []byte) {
	plane := len(src) / 3
	for c := range 3 {
		lut := &n.lut[c]
		in, out := src[c*plane:(c+1)*plane], dst[c*plane:(c+1)*plane]
		for j, v := range in {
			out[j] = lut[v]
		}
	}
}

// Batch normalises images of one size (uint8 CHW, as Apply reads them) into
// one slice, image after image: the host half of a model's input (Input
// makes the tensor).
func (n *Normalizer) Batch(imgs [][]byte) []float32 {
	if len(imgs) == 0 {
		return nil
	}
	size := len(imgs[0])
	x := make([]float32, len(imgs)*size)
	for i, img := range imgs {
		n.Apply(x[i*size:(i+1)*size], img)
	}
	return x
}

// PipelineVersion changes whenever preprocessing output changes; it is part
// of the cache key.
const PipelineVersion = 1

// Budgets of a decode (see Limits).
const (
	DefaultMaxPixels = 64_000_000 // 64 megapixels: a 1600×1200 photo is 1.9
	DefaultMaxBytes  = 32 << 20   // 32 MiB of encoded image
)

// Limits bound what decoding one image may cost; they are checked before
// the pixels are decoded (a 1 MB PNG can declare 20000×20000 pixels).
type Limits struct {
	MaxPixels int64 // width × height of the encoded image; 0: DefaultMaxPixels
	MaxBytes  int64 // size of the encoded file; 0: DefaultMaxBytes
}

func (l Limits) pixels() int64 {
	if l.MaxPixels <= 0 {
		return DefaultMaxPixels
	}
	return l.MaxPixels
}

func (l Limits) bytes() int64 {
	if l.MaxBytes <= 0 {
		return DefaultMaxBytes
	}
	return l.MaxBytes
}

// BytesError is an encoded image larger than the byte budget.
type BytesError struct {
	Size, Max int64 // Size -1: more than Max, read no further
}

func (e *BytesError) Error() string {
	if e.Size < 0 {
		return fmt.Sprintf("image of more than %d bytes is over the budget (raise --max-bytes to allow it)", e.Max)
	}
	return fmt.Sprintf("file of %d bytes is over the budget of %d bytes (raise --max-bytes to allow it)", e.Size, e.Max)
}

// Format names an encoded image format, as Sniff reads it from the first
// bytes (never from a file name).
type Format string

// The formats handnet decodes.
const (
	JPEG Format = "jpeg"
	PNG  Format = "png"
	GIF  Format = "gif"
)

// Sniff tells an image's format from its magic bytes; ok is false for
// anything else.
func Sniff(b []byte) (f Format, ok bool) {
	switch {
	case len(b) >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF:
		return JPEG, true
	case len(b) >= 8 && string(b[:8]) == "\x89PNG\r\n\x1a\n":
		return PNG, true
	case len(b) >= 6 && (string(b[:6]) == "GIF87a" || string(b[:6]) == "GIF89a"):
		return GIF, true
	}
	return "", false
}

// Preprocessor turns image files into W×H uint8 CHW images, resized with
// antialiased bilinear filtering exactly as PIL's Image.resize(BILINEAR)
// (which torchvision's Resize uses on PIL images). It is the one decoder of
// handnet — the cache, predict, the Classifier and its HTTP handler all use
// it: the format is sniffed from the content (JPEG, PNG, GIF), JPEGs go
// through libjpeg-turbo (CMYK, YCCK and greyscale included), PNG and GIF
// through Go's decoders, all after the Limits are checked. Not safe for
// concurrent use: one per goroutine.
type Preprocessor struct {
	W, H int
	// Exact decodes JPEGs at full resolution. Otherwise they are decoded at
	// the smallest DCT scale that keeps at least twice the target size,
	// which is several times faster and differs from the exact path by well
	// under 1/255 on average.
	Exact bool
	// Limits bound each decode.
	Limits Limits

	dec  *jpegDecoder
	rs   resizer
	file []byte
}

// NewPreprocessor returns a Preprocessor for w×h outputs.
func NewPreprocessor(w, h int) (*Preprocessor, error) {
	if w <= 0 || h <= 0 {
		return nil, fmt.Errorf("bad target size %dx%d", w, h)
	}
	dec, err := newJPEGDecoder()
	if err != nil {
		return nil, err
	}
	return &Preprocessor{W: w, H: h, dec: dec}, nil
}

// Size is the number of bytes of one output image (3·W·H).
func (p *Preprocessor) Size() int { return 3 * p.W * p.H }

// File reads and preprocesses one image file into dst (len Size()). Only
// regular files are read (a device, FIFO or socket is refused without
// blocking), and only up to the byte budget.
func (p *Preprocessor) File(path string, dst []byte) error {
	if err := p.open(path); err != nil {
		return err
	}
	return p.Bytes(p.file, dst)
}

// ReadFile reads an image file within the byte budget: only a regular
// file (a device, FIFO or socket is refused without blocking).
func (l Limits) ReadFile(path string) ([]byte, error) {
	p := &Preprocessor{Limits: l}
	if err := p.open(path); err != nil {
		return nil, err
	}
	return p.file, nil
}

// open reads a regular file within the byte budget into p.file.
func (p *Preprocessor) open(path string) error {
	// O_NONBLOCK: opening a FIFO must not wait for a writer.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("not a regular file (%s): refused", fileKind(st.Mode()))
	}
	if st.Size() > p.Limits.bytes() {
		return &BytesError{Size: st.Size(), Max: p.Limits.bytes()}
	}
	return p.read(f, st.Size())
}

func fileKind(m os.FileMode) string {
	switch {
	case m&os.ModeDir != 0:
		return "a folder"
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeDevice != 0:
		return "a device"
	}
	return m.Type().String()
}

// read reads r, expected to hold about hint bytes, into p.file: never more
// than the byte budget.
func (p *Preprocessor) read(r io.Reader, hint int64) error {
	max := p.Limits.bytes()
	if hint < 0 || hint > max {
		hint = 64 << 10
	}
	if int64(cap(p.file)) < hint+1 {
		p.file = make([]byte, 0, hint+1)
	}
	buf := bytes.NewBuffer(p.file[:0])
	n, err := io.Copy(buf, io.LimitReader(r, max+1))
	p.file = buf.Bytes()
	if err != nil {
		return err
	}
	if n > max {
		return &BytesError{Size: -1, Max: max}
	}
	return nil
}

// Reader reads and preprocesses one image from r (an upload, say), reading
// no more than the byte budget.
func (p *Preprocessor) Reader(r io.Reader, dst []byte) error {
	return p.ReaderContext(context.Background(), r, dst)
}

// ReaderContext is Reader waiting for the decode memory budget at most
// until ctx ends.
func (p *Preprocessor) ReaderContext(ctx context.Context, r io.Reader, dst []byte) error {
	if err := p.read(r, -1); err != nil {
		return err
	}
	return p.BytesContext(ctx, p.file, dst)
}

// Bytes preprocesses one encoded image held in memory into dst (len Size()),
// within the process-wide decode memory budget (waiting for it as long as
// it takes; see BytesContext).
func (p *Preprocessor) Bytes(data []byte, dst []byte) error {
	return p.BytesContext(context.Background(), data, dst)
}

// BytesContext is Bytes waiting for the decode memory budget at most until
// ctx ends. The decode's cost is read from the header and charged before
// anything is decoded; an image costing more than the whole budget is a
// *MemoryError.
func (p *Preprocessor) BytesContext(ctx context.Context, data []byte, dst []byte) error {
	if len(dst) != p.Size() {
		return fmt.Errorf("destination holds %d bytes, want %d", len(dst), p.Size())
	}
	if int64(len(data)) > p.Limits.bytes() {
		return &BytesError{Size: int64(len(data)), Max: p.Limits.bytes()}
	}
	if len(data) == 0 {
		return errors.New("empty file")
	}
	format, ok := Sniff(data)
	if !ok {
		return fmt.Errorf("not an image handnet reads (JPEG, PNG or GIF): starts with % x", data[:min(len(data), 8)])
	}
	cost, err := p.Cost(data)
	if err != nil {
		return err
	}
	release, err := budget.acquire(ctx, cost.Bytes, cost.What)
	if err != nil {
		return err
	}
	defer release()
	if format == JPEG {
		minW, minH := 2*p.W, 2*p.H
		if p.Exact {
			minW, minH = 0, 0
		}
		img, err := p.dec.decode(data, minW, minH, p.Limits.pixels())
		if err != nil {
			return err
		}
		p.rs.resize(img, p.W, p.H, dst)
		return nil
	}
	cfg, _, err := image.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("bad %s header: %v", format, err)
	}
	if int64(cfg.Width)*int64(cfg.Height) > p.Limits.pixels() {
		return &PixelsError{W: cfg.Width, H: cfg.Height, Max: p.Limits.pixels()}
	}
	img, _, err := image.Decode(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("corrupt or truncated %s: %v", format, err)
	}
	if b := img.Bounds(); int64(b.Dx())*int64(b.Dy()) > p.Limits.pixels() {
		return &PixelsError{W: b.Dx(), H: b.Dy(), Max: p.Limits.pixels()}
	}
	return p.image(img, dst)
}

// Image preprocesses a decoded image into dst (len Size()), within the
// pixel budget.
func (p *Preprocessor) Image(img image.Image, dst []byte) error {
	b := img.Bounds()
	if int64(b.Dx())*int64(b.Dy()) > p.Limits.pixels() {
		return &PixelsError{W: b.Dx(), H: b.Dy(), Max: p.Limits.pixels()}
	}
	return p.image(img, dst)
}

// image resizes a decoded image into dst with the Preprocessor's resizer
// (its coefficients and intermediate rows are kept between calls).
func (p *Preprocessor) image(img image.Image, dst []byte) error {
	if len(dst) != p.Size() {
		return fmt.Errorf("destination holds %d bytes, want %d", len(dst), p.Size())
	}
	b := img.Bounds()
	if b.Dx() <= 0 || b.Dy() <= 0 {
		return fmt.Errorf("empty image (%dx%d)", b.Dx(), b.Dy())
	}
	p.rs.resizeRows(b.Dx(), b.Dy(), rowReader(img), p.W, p.H, dst)
	return nil
}

// PIL's fixed-point resampling (Imaging/Resample.c): 8-bit images are
// filtered with integer coefficients of precBits fractional bits.
const precBits = 32 - 8 - 2

// coeffs holds, for each output pixel, the first input pixel and the
// integer weights of the inputs it reads.
type coeffs struct {
	inSize, outSize int
	start           []int
	n               []int
	k               []int32 // outSize × ksize
	ksize           int
}

// bilinearCoeffs computes PIL's antialiased triangle-filter coefficients for
// resizing inSize to outSize (precompute_coeffs + normalize_coeffs_8bpc).
func bilinearCoeffs(inSize, outSize int) coeffs {
	scale := float64(inSize) / float64(outSize)
	filterscale := math.Max(scale, 1)
	support := 1.0 * filterscale
	ksize := int(math.Ceil(support))*2 + 1
	c := coeffs{inSize: inSize, outSize: outSize, ksize: ksize,
		start: make([]int, outSize), n: make([]int, outSize), k: make([]int32, outSize*ksize)}
	pre := make([]float64, ksize)
	for xx := 0; xx < outSize; xx++ {
		center := (float64(xx) + 0.5) * scale
		ss := 1 / filterscale
		xmin := int(center - support + 0.5) // C truncation toward zero
		if xmin < 0 {
			xmin = 0
		}
		xmax := int(center + support + 0.5)
		if xmax > inSize {
			xmax = inSize
		}
		xmax -= xmin
		ww := 0.0
		for x := 0; x < xmax; x++ {
			w := 1 - math.Abs((float64(x+xmin)-center+0.5)*ss)
			if w < 0 {
				w = 0
			}
			pre[x] = w
			ww += w
		}
		for x := 0; x < xmax; x++ {
			v := pre[x]
			if ww != 0 {
				v /= ww
			}
			if v < 0 {
				c.k[xx*ksize+x] = int32(-0.5 + v*(1<<precBits))
			} else {
				c.k[xx*ksize+x] = int32(0.5 + v*(1<<precBits))
			}
		}
		c.start[xx], c.n[xx] = xmin, xmax
	}
	return c
}

func clip8(v int64) byte {
	v >>= precBits
	if v < 0 {
		return 0
	}
	if v > 255 {
		return 255
	}
	return byte(v)
}

// resizer caches coefficients and the intermediate image between calls.
type resizer struct {
	h, v coeffs
	mid  []byte
}

// resize resizes src (packed RGB) to w×h and writes planar CHW uint8 to dst:
// horizontal pass first, rounded to 8 bits, then vertical, as PIL does.
func (r *resizer) resize(src rgbImage, w, h int, dst []byte) {
	r.resizeRows(src.W, src.H, func(y int) []byte { return src.Pix[y*src.W*3 : (y+1)*src.W*3] }, w, h, dst)
}

// resizeRows is resize over a source of srcW×srcH pixels read one packed
// RGB row at a time (the row may be reused by the next call): only the
// horizontal pass's srcH×w rows are held, never a full-size copy.
func (r *resizer) resizeRows(srcW, srcH int, rows func(y int) []byte, w, h int, dst []byte) {
	if r.h.inSize != srcW || r.h.outSize != w {
		r.h = bilinearCoeffs(srcW, w)
	}
	if r.v.inSize != srcH || r.v.outSize != h {
		r.v = bilinearCoeffs(srcH, h)
	}
	// Horizontal: srcH rows of w packed RGB pixels.
	if need := srcH * w * 3; cap(r.mid) < need {
		r.mid = make([]byte, need)
	}
	mid := r.mid[:srcH*w*3]
	const half = int64(1) << (precBits - 1)
	for y := 0; y < srcH; y++ {
		row := rows(y)
		out := mid[y*w*3 : (y+1)*w*3]
		for xx := 0; xx < w; xx++ {
			k := r.h.k[xx*r.h.ksize : xx*r.h.ksize+r.h.n[xx]]
			in := row[r.h.start[xx]*3:]
			s0, s1, s2 := half, half, half
			for x, kv := range k {
				kk := int64(kv)
				s0 += int64(in[3*x]) * kk
				s1 += int64(in[3*x+1]) * kk
				s2 += int64(in[3*x+2]) * kk
			}
			out[3*xx], out[3*xx+1], out[3*xx+2] = clip8(s0), clip8(s1), clip8(s2)
		}
	}
	// Vertical: to planar output.
	plane := w * h
	for yy := 0; yy < h; yy++ {
		k := r.v.k[yy*r.v.ksize : yy*r.v.ksize+r.v.n[yy]]
		y0 := r.v.start[yy]
		for xx := 0; xx < w; xx++ {
			s0, s1, s2 := half, half, half
			for y, kv := range k {
				kk := int64(kv)
				p := mid[((y0+y)*w+xx)*3:]
				s0 += int64(p[0]) * kk
				s1 += int64(p[1]) * kk
				s2 += int64(p[2]) * kk
			}
			o := yy*w + xx
			dst[o], dst[plane+o], dst[2*plane+o] = clip8(s0), clip8(s1), clip8(s2)
		}
	}
}

// Image preprocesses a decoded image (any image.Image) into dst (3·w·h
// bytes, CHW) with the same PIL-exact antialiased bilinear resize.
func Image(img image.Image, w, h int, dst []byte) error {
	if len(dst) != 3*w*h {
		return fmt.Errorf("destination holds %d bytes, want %d", len(dst), 3*w*h)
	}
	b := img.Bounds()
	if b.Dx() <= 0 || b.Dy() <= 0 {
		return fmt.Errorf("empty image (%dx%d)", b.Dx(), b.Dy())
	}
	var r resizer
	r.resizeRows(b.Dx(), b.Dy(), rowReader(img), w, h, dst)
	return nil
}

// rowReader returns a function giving row y (0-based) of img as packed RGB,
// each pixel as color.NRGBAModel converts it (alpha dropped, as PIL's
// convert("RGB")), in one reused buffer. The decoders' own types are read
// without a per-pixel interface call.
func rowReader(img image.Image) func(y int) []byte {
	b := img.Bounds()
	row := make([]byte, 3*b.Dx())
	generic := func(y int) []byte {
		for x, i := b.Min.X, 0; x < b.Max.X; x, i = x+1, i+3 {
			c := color.NRGBAModel.Convert(img.At(x, y)).(color.NRGBA)
			row[i], row[i+1], row[i+2] = c.R, c.G, c.B
		}
		return row
	}
	switch m := img.(type) {
	case *image.YCbCr: // what image/jpeg decodes to
		return func(y int) []byte {
			y += b.Min.Y
			for x, i := b.Min.X, 0; x < b.Max.X; x, i = x+1, i+3 {
				yi, ci := m.YOffset(x, y), m.COffset(x, y)
				row[i], row[i+1], row[i+2] = color.YCbCrToRGB(m.Y[yi], m.Cb[ci], m.Cr[ci])
			}
			return row
		}
	case *image.NRGBA: // PNG with alpha: the colour as stored
		return func(y int) []byte {
			pix := m.Pix[m.PixOffset(b.Min.X, y+b.Min.Y):]
			for i, j := 0, 0; i < len(row); i, j = i+3, j+4 {
				row[i], row[i+1], row[i+2] = pix[j], pix[j+1], pix[j+2]
			}
			return row
		}
	case *image.RGBA: // opaque PNG; premultiplied rows with alpha go the long way
		return func(y int) []byte {
			pix := m.Pix[m.PixOffset(b.Min.X, y+b.Min.Y):]
			for i, j := 0, 0; i < len(row); i, j = i+3, j+4 {
				if pix[j+3] != 255 {
					return generic(y + b.Min.Y)
				}
				row[i], row[i+1], row[i+2] = pix[j], pix[j+1], pix[j+2]
			}
			return row
		}
	case *image.Gray:
		return func(y int) []byte {
			pix := m.Pix[m.PixOffset(b.Min.X, y+b.Min.Y):]
			for i, j := 0, 0; i < len(row); i, j = i+3, j+1 {
				row[i], row[i+1], row[i+2] = pix[j], pix[j], pix[j]
			}
			return row
		}
	case *image.Paletted: // GIF, palette PNG: one conversion per palette entry
		var lut [256][3]byte // indices past the palette: black
		for k, c := range m.Palette {
			if k < 256 && c != nil {
				n := color.NRGBAModel.Convert(c).(color.NRGBA)
				lut[k] = [3]byte{n.R, n.G, n.B}
			}
		}
		return func(y int) []byte {
			pix := m.Pix[m.PixOffset(b.Min.X, y+b.Min.Y):]
			for i, j := 0, 0; i < len(row); i, j = i+3, j+1 {
				c := &lut[pix[j]]
				row[i], row[i+1], row[i+2] = c[0], c[1], c[2]
			}
			return row
		}
	}
	return func(y int) []byte { return generic(y + b.Min.Y) }
}
