package vision

// #cgo LDFLAGS: -lturbojpeg
// #include <stdlib.h>
// #include <turbojpeg.h>
//
// static int scaled(int dim, int num, int denom) { return (dim * num + denom - 1) / denom; }
import "C"

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"
)

// jpegDecoder decodes JPEGs with libjpeg-turbo, using its DCT-domain
// scaling to skip the detail a downscale would throw away. Not safe for
// concurrent use: give each worker its own.
type jpegDecoder struct {
	h   C.tjhandle
	buf []byte
}

func newJPEGDecoder() (*jpegDecoder, error) {
	h := C.tjInitDecompress()
	if h == nil {
		return nil, errors.New("libjpeg-turbo: cannot create a decompressor")
	}
	d := &jpegDecoder{h: h}
	runtime.SetFinalizer(d, (*jpegDecoder).close)
	return d, nil
}

func (d *jpegDecoder) close() {
	if d.h != nil {
		C.tjDestroy(d.h)
		d.h = nil
	}
}

// rgbImage is packed 8-bit RGB, row-major.
type rgbImage struct {
	W, H int
	Pix  []byte // len 3*W*H
}

// header reads a JPEG's size and colour space without decoding it.
func (d *jpegDecoder) header(data []byte) (w, h int, colorspace C.int, err error) {
	if len(data) < 3 || data[0] != 0xFF || data[1] != 0xD8 {
		return 0, 0, 0, fmt.Errorf("not a JPEG file (starts with % x)", data[:min(len(data), 4)])
	}
	var cw, ch, subsamp C.int
	src := (*C.uchar)(unsafe.Pointer(&data[0]))
	if C.tjDecompressHeader3(d.h, src, C.ulong(len(data)), &cw, &ch, &subsamp, &colorspace) != 0 {
		return 0, 0, 0, fmt.Errorf("bad JPEG header: %s", C.GoString(C.tjGetErrorStr2(d.h)))
	}
	if cw <= 0 || ch <= 0 {
		return 0, 0, 0, errors.New("truncated JPEG: no image size in its header")
	}
	return int(cw), int(ch), colorspace, nil
}

// decode decodes data to RGB at the smallest DCT scale (1/8 … 1) whose size
// is at least minW×minH; minW = minH = 0 decodes at full size. Images over
// maxPixels (at full size) are refused before anything is decoded. CMYK and
// YCCK JPEGs (Adobe's inverted CMYK, as Photoshop writes them) are
// converted to RGB as PIL converts them; greyscale ones are expanded. The
// returned image aliases an internal buffer valid until the next call.
func (d *jpegDecoder) decode(data []byte, minW, minH int, maxPixels int64) (rgbImage, error) {
	if len(data) == 0 {
		return rgbImage{}, errors.New("empty file")
	}
	w, h, colorspace, err := d.header(data)
	if err != nil {
		return rgbImage{}, err
	}
	if int64(w)*int64(h) > maxPixels {
		return rgbImage{}, &PixelsError{W: w, H: h, Max: maxPixels}
	}
	num, denom := jpegScale(w, h, minW, minH)
	sw, sh := int(C.scaled(C.int(w), C.int(num), C.int(denom))), int(C.scaled(C.int(h), C.int(num), C.int(denom)))
	cmyk := colorspace == C.TJCS_CMYK || colorspace == C.TJCS_YCCK
	channels, format := 3, C.int(C.TJPF_RGB)
	if cmyk {
		channels, format = 4, C.TJPF_CMYK
	}
	if need := channels * sw * sh; cap(d.buf) < need {
		d.buf = make([]byte, need)
	}
	out := d.buf[:channels*sw*sh]
	src := (*C.uchar)(unsafe.Pointer(&data[0]))
	// TJFLAG_STOPONWARNING: a truncated file is an error, not a grey half.
	if C.tjDecompress2(d.h, src, C.ulong(len(data)), (*C.uchar)(unsafe.Pointer(&out[0])), C.int(sw), 0, C.int(sh),
		format, C.TJFLAG_STOPONWARNING) != 0 {
		return rgbImage{}, fmt.Errorf("corrupt or truncated JPEG: %s", C.GoString(C.tjGetErrorStr2(d.h)))
	}
	if cmyk {
		// In place: pixel i's RGB lands before its CMYK is read again.
		for i := 0; i < sw*sh; i++ {
			c, m, y, k := int(out[4*i]), int(out[4*i+1]), int(out[4*i+2]), int(out[4*i+3])
			out[3*i], out[3*i+1], out[3*i+2] = byte((c*k+127)/255), byte((m*k+127)/255), byte((y*k+127)/255)
		}
		out = out[:3*sw*sh]
	}
	return rgbImage{W: sw, H: sh, Pix: out}, nil
}

// jpegScale is the smallest DCT scale (num/denom, 1/8 … 1) at which a w×h
// JPEG is at least minW×minH; 1/1 when minW or minH is 0.
func jpegScale(w, h, minW, minH int) (num, denom int) {
	num, denom = 1, 1
	if minW > 0 && minH > 0 {
		var n C.int
		factors := unsafe.Slice(C.tjGetScalingFactors(&n), int(n))
		for _, f := range factors {
			fn, fd := int(f.num), int(f.denom)
			if fn*denom >= num*fd { // not smaller than the best so far
				continue
			}
			if int(C.scaled(C.int(w), f.num, f.denom)) >= minW && int(C.scaled(C.int(h), f.num, f.denom)) >= minH {
				num, denom = fn, fd
			}
		}
	}
	return num, denom
}

// PixelsError is an image larger than the pixel budget (a decompression
// bomb, or a photo too big to serve).
type PixelsError struct {
	W, H int
	Max  int64
}

func (e *PixelsError) Error() string {
	return fmt.Sprintf("image of %dx%d pixels (%.1f megapixels) is over the budget of %.1f megapixels (raise --max-pixels to allow it)",
		e.W, e.H, float64(e.W)*float64(e.H)/1e6, float64(e.Max)/1e6)
}
