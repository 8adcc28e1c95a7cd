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

// decode decodes data to RGB at the smallest DCT scale (1/8 … 1) whose size
// is at least minW×minH; minW = minH = 0 decodes at full size. The returned
// image aliases an internal buffer valid until the next call.
func (d *jpegDecoder) decode(data []byte, minW, minH int) (rgbImage, error) {
	if len(data) == 0 {
		return rgbImage{}, errors.New("empty file")
	}
	if len(data) < 3 || data[0] != 0xFF || data[1] != 0xD8 {
		return rgbImage{}, fmt.Errorf("not a JPEG file (starts with % x)", data[:min(len(data), 4)])
	}
	var w, h, subsamp, colorspace C.int
	src := (*C.uchar)(unsafe.Pointer(&data[0]))
	if C.tjDecompressHeader3(d.h, src, C.ulong(len(data)), &w, &h, &subsamp, &colorspace) != 0 {
		return rgbImage{}, fmt.Errorf("bad JPEG header: %s", C.GoString(C.tjGetErrorStr2(d.h)))
	}
	if w <= 0 || h <= 0 {
		return rgbImage{}, errors.New("truncated JPEG: no image size in its header")
	}
	num, denom := 1, 1
	if minW > 0 && minH > 0 {
		var n C.int
		factors := unsafe.Slice(C.tjGetScalingFactors(&n), int(n))
		for _, f := range factors {
			fn, fd := int(f.num), int(f.denom)
			if fn*denom >= num*fd { // not smaller than the best so far
				continue
			}
			if int(C.scaled(w, f.num, f.denom)) >= minW && int(C.scaled(h, f.num, f.denom)) >= minH {
				num, denom = fn, fd
			}
		}
	}
	sw, sh := int(C.scaled(w, C.int(num), C.int(denom))), int(C.scaled(h, C.int(num), C.int(denom)))
	if need := 3 * sw * sh; cap(d.buf) < need {
		d.buf = make([]byte, need)
	}
	out := d.buf[:3*sw*sh]
	// TJFLAG_STOPONWARNING: a truncated file is an error, not a grey half.
	if C.tjDecompress2(d.h, src, C.ulong(len(data)), (*C.uchar)(unsafe.Pointer(&out[0])), C.int(sw), 0, C.int(sh),
		C.TJPF_RGB, C.TJFLAG_STOPONWARNING) != 0 {
		return rgbImage{}, fmt.Errorf("corrupt or truncated JPEG: %s", C.GoString(C.tjGetErrorStr2(d.h)))
	}
	return rgbImage{W: sw, H: sh, Pix: out}, nil
}
