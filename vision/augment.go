package vision

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
)

// Augment describes random training-time changes of an image. Every
// amount is a maximum; each image draws uniformly within it, from a
// generator seeded by (seed, epoch, record), so runs repeat exactly.
type Augment struct {
	Rotate     float64 // degrees
	Translate  float64 // fraction of width/height
	Scale      float64 // relative change of size
	Brightness float64 // relative change
	Contrast   float64 // relative change
	Saturation float64 // relative change
	// HFlip is the probability of a horizontal mirror. A mirrored left hand
	// is a right hand, so the label is mirrored too (see Scheme.MirrorLabel).
	HFlip float64
}

// DefaultAugment is a mild setting: small pose changes and colour jitter,
// no flips.
func DefaultAugment() Augment {
	return Augment{Rotate: 10, Translate: 0.05, Scale: 0.1, Brightness: 0.2, Contrast: 0.2, Saturation: 0.2}
}

// augmentKeys name the amounts of an Augment (amounts, in the same order)
// in ParseAugment's key=value pairs.
var augmentKeys = []string{"rotate", "translate", "scale", "brightness", "contrast", "saturation", "hflip"}

func (a *Augment) amounts() []*float64 {
	return []*float64{&a.Rotate, &a.Translate, &a.Scale, &a.Brightness, &a.Contrast, &a.Saturation, &a.HFlip}
}

// ParseAugment reads "none", "default", or comma-separated key=value pairs
// over the default (e.g. "rotate=15,hflip=0.5").
func ParseAugment(s string) (*Augment, error) {
	s = strings.TrimSpace(s)
	switch s {
	case "", "none", "off":
		return nil, nil
	case "default", "on":
		a := DefaultAugment()
		return &a, nil
	}
	a := DefaultAugment()
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		f, err := strconv.ParseFloat(v, 64)
		if !ok || err != nil || !(f >= 0) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("augmentation %q: want key=a finite non-negative number", kv)
		}
		i := slices.Index(augmentKeys, strings.TrimSpace(k))
		switch {
		case i < 0:
			return nil, fmt.Errorf("augmentation %q: unknown key (%s)", k, strings.Join(augmentKeys, ", "))
		case augmentKeys[i] == "hflip" && f > 1:
			return nil, fmt.Errorf("augmentation hflip=%v: a probability, want 0..1", f)
		}
		*a.amounts()[i] = f
	}
	return &a, nil
}

// Canonical is the one spelling of a that ParseAugment reads back to the
// same amounts: "none" for nil (no augmentation), "default" for
// DefaultAugment, else the key=value pairs of the amounts that differ from
// the default, in ParseAugment's key order, each number in its shortest
// form: "hflip=0.5", "rotate=15,hflip=0.5". Spellings of the same
// augmentation ("off", "on", "hflip=0.50,rotate=15") have the same
// canonical one.
func (a *Augment) Canonical() string {
	if a == nil {
		return "none"
	}
	def := DefaultAugment()
	var pairs []string
	for i, v := range a.amounts() {
		if *v != *def.amounts()[i] {
			pairs = append(pairs, augmentKeys[i]+"="+strconv.FormatFloat(*v+0, 'g', -1, 64)) // +0: no "-0"
		}
	}
	if len(pairs) == 0 {
		return "default"
	}
	return strings.Join(pairs, ",")
}

func uniform(rng *rand.Rand, m float64) float64 { return (rng.Float64()*2 - 1) * m }

// draws are one image's random choices, drawn in a fixed order so that the
// CPU and device loaders make the same ones.
type draws struct {
	angle, scale, tx, ty, bright, contrast, sat float64
	flip                                        bool
}

func (a *Augment) draw(rng *rand.Rand, w, h int) draws {
	var d draws
	d.angle = uniform(rng, a.Rotate) * math.Pi / 180
	d.scale = 1 + uniform(rng, a.Scale)
	d.tx, d.ty = uniform(rng, a.Translate)*float64(w), uniform(rng, a.Translate)*float64(h)
	d.bright = 1 + uniform(rng, a.Brightness)
	d.contrast = 1 + uniform(rng, a.Contrast)
	d.sat = 1 + uniform(rng, a.Saturation)
	d.flip = a.HFlip > 0 && rng.Float64() < a.HFlip
	return d
}

// FlipsOnly says whether the augmentation is at most a horizontal flip:
// what the device loader (LoaderOptions.OnDevice) does on the device.
func (a *Augment) FlipsOnly() bool {
	return a == nil || a.Rotate == 0 && a.Translate == 0 && a.Scale == 0 && a.Brightness == 0 && a.Contrast == 0 && a.Saturation == 0
}

// apply writes an augmented copy of src (uint8 CHW, w×h) to dst and says
// whether it mirrored the image. Pixels from outside the frame are white,
// like the photos' background.
func (a *Augment) apply(src, dst []byte, w, h int, rng *rand.Rand) (flipped bool) {
	d := a.draw(rng, w, h)
	angle, scale, tx, ty, bright, contrast, sat := d.angle, d.scale, d.tx, d.ty, d.bright, d.contrast, d.sat
	flipped = d.flip
	// Inverse map: output pixel → source position.
	cos, sin := math.Cos(angle)/scale, math.Sin(angle)/scale
	cx, cy := float64(w)/2, float64(h)/2
	plane := w * h
	var mean float64
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			ox := float64(x) + 0.5 - cx - tx
			if flipped {
				ox = -ox
			}
			oy := float64(y) + 0.5 - cy - ty
			sx := cos*ox + sin*oy + cx - 0.5
			sy := -sin*ox + cos*oy + cy - 0.5
			x0, y0 := int(math.Floor(sx)), int(math.Floor(sy))
			fx, fy := sx-float64(x0), sy-float64(y0)
			var rgb [3]float64
			for c := range 3 {
				p := src[c*plane:]
				at := func(xx, yy int) float64 {
					if xx < 0 || yy < 0 || xx >= w || yy >= h {
						return 255
					}
					return float64(p[yy*w+xx])
				}
				rgb[c] = (at(x0, y0)*(1-fx)+at(x0+1, y0)*fx)*(1-fy) + (at(x0, y0+1)*(1-fx)+at(x0+1, y0+1)*fx)*fy
			}
			// Saturation: blend with the grey value; brightness: scale.
			grey := 0.299*rgb[0] + 0.587*rgb[1] + 0.114*rgb[2]
			for c := range 3 {
				v := (grey + (rgb[c]-grey)*sat) * bright
				rgb[c] = v
				mean += v
			}
			o := y*w + x
			for c := range 3 {
				dst[c*plane+o] = clampByte(rgb[c])
			}
		}
	}
	if contrast != 1 {
		mean /= float64(3 * plane)
		for i := range dst[:3*plane] {
			dst[i] = clampByte(mean + (float64(dst[i])-mean)*contrast)
		}
	}
	return flipped
}

func clampByte(v float64) byte {
	if v <= 0 {
		return 0
	}
	if v >= 255 {
		return 255
	}
	return byte(v + 0.5)
}
