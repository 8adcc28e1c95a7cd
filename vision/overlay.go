package vision

import (
	"image"
	"image/color"
	"image/draw"
	"math"

	xdraw "golang.org/x/image/draw"
)

// Jet colours a value in [0, 1] on the blue → cyan → yellow → red scale
// that Grad-CAM pictures use (matplotlib's and OpenCV's "jet").
func Jet(v float32) color.RGBA {
	x := math.Max(0, math.Min(1, float64(v)))
	ch := func(c float64) uint8 { return uint8(255 * math.Max(0, math.Min(1, 1.5-math.Abs(4*x-c)))) }
	return color.RGBA{ch(3), ch(2), ch(1), 255}
}

// Fit returns img scaled (bilinearly) so that its longer side is at most
// maxSide pixels, or img itself when it is small enough.
func Fit(img image.Image, maxSide int) image.Image {
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	if maxSide <= 0 || max(w, h) <= maxSide {
		return img
	}
	f := float64(maxSide) / float64(max(w, h))
	dst := image.NewRGBA(image.Rect(0, 0, max(1, int(float64(w)*f+0.5)), max(1, int(float64(h)*f+0.5))))
	xdraw.BiLinear.Scale(dst, dst.Bounds(), img, b, xdraw.Src, nil)
	return dst
}

// Overlay blends a heat map over a photo: m holds w×h values in [0, 1]
// (row-major), stretched bilinearly over the photo's frame and coloured
// with Jet; alpha is the map's weight.
func Overlay(photo image.Image, m []float32, w, h int, alpha float64) *image.RGBA {
	b := photo.Bounds()
	out := image.NewRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	draw.Draw(out, out.Bounds(), photo, b.Min, draw.Src)
	sx, sy := float64(w)/float64(b.Dx()), float64(h)/float64(b.Dy())
	at := func(x, y int) float64 { return float64(m[min(max(y, 0), h-1)*w+min(max(x, 0), w-1)]) }
	for y := 0; y < b.Dy(); y++ {
		// Pixel centres, as align_corners=False.
		fy := (float64(y)+0.5)*sy - 0.5
		y0 := int(math.Floor(fy))
		dy := fy - float64(y0)
		for x := 0; x < b.Dx(); x++ {
			fx := (float64(x)+0.5)*sx - 0.5
			x0 := int(math.Floor(fx))
			dx := fx - float64(x0)
			v := (at(x0, y0)*(1-dx)+at(x0+1, y0)*dx)*(1-dy) + (at(x0, y0+1)*(1-dx)+at(x0+1, y0+1)*dx)*dy
			c := Jet(float32(v))
			i := out.PixOffset(x, y)
			p := out.Pix[i : i+3 : i+3]
			p[0] = uint8(float64(p[0])*(1-alpha) + float64(c.R)*alpha)
			p[1] = uint8(float64(p[1])*(1-alpha) + float64(c.G)*alpha)
			p[2] = uint8(float64(p[2])*(1-alpha) + float64(c.B)*alpha)
		}
	}
	return out
}

// CHW turns a preprocessed image (uint8 CHW, w×h: a cache entry) back
// into an image.
func CHW(pix []byte, w, h int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	plane := w * h
	for i := range plane {
		img.Pix[4*i], img.Pix[4*i+1], img.Pix[4*i+2], img.Pix[4*i+3] = pix[i], pix[plane+i], pix[2*plane+i], 255
	}
	return img
}
