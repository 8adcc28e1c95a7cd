package vision

import (
	"bytes"
	"encoding/csv"
	"fmt"
	"image"
	"image/jpeg"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/handnet/handnet/handnet/runtime/fileio"
)

// FakeOptions configures GenerateFake.
type FakeOptions struct {
	Count         int    // images
	Seed          uint64 // same seed, same files
	Width, Height int    // image size; 0 means 1600×1200 like the real photos
	PerSubject    int    // images per subject; 0 means 58 (the real average)
	// Signals, when set, sets how strongly a photo shows who the person is
	// and their gender (nil: no identity marks, gender cues in full).
	Signals *FakeSignals
	// Progress, when set, is called after each image with the number done.
	Progress func(done int)
}

// GenerateFake writes a synthetic 11k Hands dataset into dir: HandInfo.csv
// and Hands/Hand_XXXXXXX.jpg, white background, procedurally drawn hands.
//
// The class is learnable but not trivial: gender shows in hand size,
// finger width and skin tone (overlapping distributions, plus nail polish
// on some female hands); dorsal hands show nails and knuckles, palmar
// hands palm creases and a lighter palm; the thumb's side tells left from
// right only together with the aspect. Every image has its own pose,
// scale and lighting.
func GenerateFake(dir string, o FakeOptions) error {
	if o.Count <= 0 {
		return fmt.Errorf("fake data: count %d, want > 0", o.Count)
	}
	if o.Width == 0 && o.Height == 0 {
		o.Width, o.Height = 1600, 1200
	}
	if o.Width < 32 || o.Height < 32 || o.Width > 8000 || o.Height > 8000 {
		return fmt.Errorf("fake data: size %dx%d, want between 32 and 8000 pixels a side", o.Width, o.Height)
	}
	if o.PerSubject <= 0 {
		o.PerSubject = 58
	}
	if err := os.MkdirAll(filepath.Join(dir, ImagesDir), 0o755); err != nil {
		return err
	}
	if err := o.Signals.check(); err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(o.Seed, 0x4a4e4453))
	// The people's signals draw from a stream of their own, so that the
	// draws of the classic look (and its images) stay the same.
	prng := rand.New(rand.NewPCG(o.Seed, 0x50454f50))
	type job struct {
		rec  Record
		pose handPose
	}
	jobs := make([]job, 0, o.Count)
	var subj subject
	for i := 0; i < o.Count; i++ {
		if i%o.PerSubject == 0 {
			subj = newSubject(rng, prng, i/o.PerSubject, o.Signals)
		}
		aspect := Aspects[(i%o.PerSubject)*len(Aspects)/o.PerSubject]
		rec := Record{Line: i + 2, ID: subj.id, Age: subj.age, Gender: subj.gender, SkinColor: subj.skinName,
			NailPolish: subj.polish, Accessories: subj.mark > 0, Aspect: aspect, ImageName: fmt.Sprintf("Hand_%07d.jpg", i+2)}
		jobs = append(jobs, job{rec, newPose(rng, subj, aspect)})
	}
	var (
		next, done atomic.Int64
		wg         sync.WaitGroup
		errOnce    sync.Once
		firstErr   error
	)
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			img := image.NewRGBA(image.Rect(0, 0, o.Width, o.Height))
			var buf bytes.Buffer
			for {
				i := int(next.Add(1) - 1)
				if i >= len(jobs) {
					return
				}
				drawHand(img, jobs[i].pose)
				buf.Reset()
				if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: 90}); err == nil {
					err = fileio.WriteAtomic(filepath.Join(dir, ImagesDir, jobs[i].rec.ImageName), buf.Bytes())
					if err != nil {
						errOnce.Do(func() { firstErr = err })
						return
					}
				}
				if d := done.Add(1); o.Progress != nil {
					o.Progress(int(d))
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	var csvBuf bytes.Buffer
	csvBuf.WriteString("id,age,gender,skinColor,accessories,nailPolish,aspectOfHand,imageName,irregularities\r\n")
	b01 := map[bool]string{false: "0", true: "1"}
	for _, j := range jobs {
		r := j.rec
		q := func(s string) string { return strconv.Quote(s) }
		fmt.Fprintf(&csvBuf, "%s,%d,%s,%s,%s,%s,%s,%s,%s\r\n", q(r.ID), r.Age, q(r.Gender), q(r.SkinColor),
			b01[r.Accessories], b01[r.NailPolish], q(r.Aspect), q(r.ImageName), b01[r.Irregularities])
	}
	// Check the CSV reads back before putting it in place.
	if _, err := csv.NewReader(bytes.NewReader(csvBuf.Bytes())).ReadAll(); err != nil {
		return err
	}
	return fileio.WriteAtomic(filepath.Join(dir, "HandInfo.csv"), csvBuf.Bytes())
}

// subject holds what stays the same across one person's photos.
type subject struct {
	id, gender, skinName string
	age                  int
	polish               bool
	size, fingerW        float64 // relative hand size and finger width
	skin                 [3]float64
	fingerLen            [5]float64
	// mark is the strength (0..1) of the person's identity marks: a
	// backdrop of four tiles tinted in their colours and a wristband.
	mark     float64
	backdrop [4][3]float64
	band     [3]float64
}

var skinTones = []struct {
	name string
	rgb  [3]float64
}{
	{"very fair", [3]float64{236, 200, 180}},
	{"fair", [3]float64{222, 180, 150}},
	{"medium", [3]float64{190, 140, 105}},
	{"dark", [3]float64{130, 90, 65}},
}

// newSubject draws person n. rng draws the classic look; prng the
// signals' own draws (sig nil: the classic look, unchanged).
func newSubject(rng, prng *rand.Rand, n int, sig *FakeSignals) subject {
	g := 1.0 // gender signal
	if sig != nil {
		g = sig.Gender
	}
	s := subject{id: fmt.Sprintf("%07d", n), age: 18 + rng.IntN(50)}
	male := rng.Float64() < 0.4
	tone := rng.IntN(3)
	// Each gender cue is the classic one times g: hand size and finger
	// width move towards a shared middle, males are darker with
	// probability g, nail polish shows on 25 % of women and none of the
	// men at g = 1 and on 15 % of everyone at g = 0.
	if male {
		s.gender = "male"
		s.size = 1.02 + 0.06*g + rng.NormFloat64()*0.06
		s.fingerW = 1.05 + 0.10*g + rng.NormFloat64()*0.08
		if darker := rng.IntN(2); g >= 1 || prng.Float64() < g {
			tone = min(tone+darker, 3) // a little darker on average
		}
		if g < 1 {
			s.polish = prng.Float64() < 0.15*(1-g)
		}
	} else {
		s.gender = "female"
		s.size = 1.02 - 0.06*g + rng.NormFloat64()*0.06
		s.fingerW = 1.05 - 0.10*g + rng.NormFloat64()*0.08
		s.polish = rng.Float64() < 0.25*g+0.15*(1-g)
	}
	if sig != nil && sig.Identity > 0 {
		s.mark = sig.Identity
		for k := range s.backdrop {
			s.backdrop[k] = hueRGB(prng.Float64(), 0.55+0.45*prng.Float64(), 0.6+0.4*prng.Float64())
		}
		s.band = hueRGB(prng.Float64(), 0.8, 0.35+0.6*prng.Float64())
	}
	s.skinName = skinTones[tone].name
	for c := range 3 {
		s.skin[c] = skinTones[tone].rgb[c] + rng.NormFloat64()*8
	}
	for f := range 5 {
		s.fingerLen[f] = 1 + rng.NormFloat64()*0.05
	}
	return s
}

// FakeSignals are the strengths, 0 to 1, of what a synthetic photo shows
// of its person.
type FakeSignals struct {
	// Identity: each person gets a backdrop of their own (four tiles, the
	// image's quarters, in colours of their own) and a wristband colour,
	// blended in with this strength (0: white background, no band),
	// constant over their photos; a model can learn people by them — and,
	// when the same people are in training and test, their gender.
	Identity float64
	// Gender scales the gender cues (hand size, finger width, skin tone,
	// nail polish): 1 the classic look, 0 none at all (gender can then be
	// told from a photo only by knowing the person).
	Gender float64
}

func (sig *FakeSignals) check() error {
	if sig == nil {
		return nil
	}
	for _, v := range []struct {
		name string
		v    float64
	}{{"identity signal", sig.Identity}, {"gender signal", sig.Gender}} {
		if !(v.v >= 0 && v.v <= 1) {
			return fmt.Errorf("fake data: %s %v, want 0 to 1", v.name, v.v)
		}
	}
	return nil
}

// hueRGB is the colour of hue h, saturation s and value v (each 0..1) on
// a 0..255 scale.
func hueRGB(h, s, v float64) [3]float64 {
	h = math.Mod(h, 1) * 6
	k := int(h)
	f := h - float64(k)
	p, q, t := v*(1-s), v*(1-s*f), v*(1-s*(1-f))
	rgb := [6][3]float64{{v, t, p}, {q, v, p}, {p, v, t}, {p, q, v}, {t, p, v}, {v, p, q}}[k%6]
	return [3]float64{255 * rgb[0], 255 * rgb[1], 255 * rgb[2]}
}

// handPose is everything needed to draw one photo.
type handPose struct {
	subj          subject
	dorsal, right bool
	angle         float64 // radians, 0 = fingers up
	cx, cy, scale float64 // palm centre in [0,1] image units, overall scale
	light         float64 // brightness factor
	spread        float64 // finger spread, radians
}

func newPose(rng *rand.Rand, s subject, aspect string) handPose {
	return handPose{subj: s, dorsal: aspect[:6] == "dorsal", right: aspect[len(aspect)-5:] == "right",
		angle: rng.NormFloat64() * 0.15, cx: 0.5 + rng.NormFloat64()*0.04, cy: 0.6 + rng.NormFloat64()*0.03,
		scale: s.size * (1 + rng.NormFloat64()*0.05), light: 1 + rng.NormFloat64()*0.06, spread: 0.12 + rng.Float64()*0.1}
}

// canvas blends shapes into an RGBA image, in a frame rotated and scaled
// around the palm centre. Units: 1 = image height.
type canvas struct {
	img          *image.RGBA
	h            float64
	cx, cy       float64
	cosA, sinA   float64
	scale, light float64
}

func (c *canvas) toImage(x, y float64) (float64, float64) {
	x, y = x*c.scale, y*c.scale
	return (c.cx + x*c.cosA - y*c.sinA) * c.h, (c.cy + x*c.sinA + y*c.cosA) * c.h
}

// fill blends col into the pixels where sdf (in image pixels, negative
// inside) is below 0.5, antialiased over one pixel.
func (c *canvas) fill(x0, y0, x1, y1 float64, sdf func(px, py float64) float64, col [3]float64, alpha float64) {
	b := c.img.Bounds()
	ix0, iy0 := max(int(x0)-2, b.Min.X), max(int(y0)-2, b.Min.Y)
	ix1, iy1 := min(int(x1)+2, b.Max.X), min(int(y1)+2, b.Max.Y)
	for py := iy0; py < iy1; py++ {
		for px := ix0; px < ix1; px++ {
			d := sdf(float64(px)+0.5, float64(py)+0.5)
			cov := math.Min(math.Max(0.5-d, 0), 1) * alpha
			if cov <= 0 {
				continue
			}
			o := c.img.PixOffset(px, py)
			p := c.img.Pix[o : o+3]
			for k := range 3 {
				v := col[k] * c.light
				p[k] = uint8(math.Min(math.Max(float64(p[k])*(1-cov)+v*cov, 0), 255))
			}
		}
	}
}

// capsule fills a segment of radius r (frame units) from a to b.
func (c *canvas) capsule(ax, ay, bx, by, r float64, col [3]float64, alpha float64) {
	pax, pay := c.toImage(ax, ay)
	pbx, pby := c.toImage(bx, by)
	pr := r * c.scale * c.h
	dx, dy := pbx-pax, pby-pay
	l2 := dx*dx + dy*dy
	c.fill(math.Min(pax, pbx)-pr, math.Min(pay, pby)-pr, math.Max(pax, pbx)+pr, math.Max(pay, pby)+pr,
		func(px, py float64) float64 {
			t := 0.0
			if l2 > 0 {
				t = math.Min(math.Max(((px-pax)*dx+(py-pay)*dy)/l2, 0), 1)
			}
			ex, ey := px-pax-t*dx, py-pay-t*dy
			return math.Sqrt(ex*ex+ey*ey) - pr
		}, col, alpha)
}

// ellipse fills an ellipse centred at (x, y) with radii rx, ry along the
// frame's axes rotated by rot.
func (c *canvas) ellipse(x, y, rx, ry, rot float64, col [3]float64, alpha float64) {
	px0, py0 := c.toImage(x, y)
	prx, pry := rx*c.scale*c.h, ry*c.scale*c.h
	a := math.Atan2(c.sinA, c.cosA) + rot
	ca, sa := math.Cos(a), math.Sin(a)
	rmax := math.Max(prx, pry)
	c.fill(px0-rmax, py0-rmax, px0+rmax, py0+rmax, func(px, py float64) float64 {
		dx, dy := px-px0, py-py0
		u, v := (dx*ca+dy*sa)/prx, (-dx*sa+dy*ca)/pry
		return (math.Sqrt(u*u+v*v) - 1) * math.Min(prx, pry)
	}, col, alpha)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func scaleCol(c [3]float64, f float64) [3]float64 { return [3]float64{c[0] * f, c[1] * f, c[2] * f} }

func drawHand(img *image.RGBA, p handPose) {
	for i := range img.Pix {
		img.Pix[i] = 255
	}
	if m := p.subj.mark; m > 0 { // the person's backdrop: four tiles
		var bg [4][3]uint8
		for t := range bg {
			for k := range 3 {
				bg[t][k] = uint8(math.Round(255*(1-m) + p.subj.backdrop[t][k]*m))
			}
		}
		b := img.Rect
		for y := b.Min.Y; y < b.Max.Y; y++ {
			for x := b.Min.X; x < b.Max.X; x++ {
				t := bg[btoi(2*(x-b.Min.X) >= b.Dx())+2*btoi(2*(y-b.Min.Y) >= b.Dy())]
				o := img.PixOffset(x, y)
				img.Pix[o], img.Pix[o+1], img.Pix[o+2] = t[0], t[1], t[2]
			}
		}
	}
	c := &canvas{img: img, h: float64(img.Rect.Dy()), cx: p.cx * float64(img.Rect.Dx()) / float64(img.Rect.Dy()), cy: p.cy,
		cosA: math.Cos(p.angle), sinA: math.Sin(p.angle), scale: p.scale * 1.7, light: p.light}
	s := p.subj
	skin := s.skin
	shade := scaleCol(skin, 0.85)
	fw := 0.028 * s.fingerW
	// Wrist and forearm (with the person's wristband), then the palm.
	c.capsule(0, 0.05, 0, 0.6, 0.085*s.fingerW, shade, 1)
	if s.mark > 0 {
		c.capsule(0, 0.2, 0, 0.27, 0.095*s.fingerW, s.band, s.mark)
	}
	c.ellipse(0, 0, 0.105*s.fingerW, 0.12, 0, skin, 1)
	// Thumb side, in the frame: a right hand seen from the back has its
	// thumb on the image's left; the palm side mirrors that.
	thumbSide := 1.0
	if p.right == p.dorsal {
		thumbSide = -1
	}
	// Four fingers, index next to the thumb.
	bases := [4]float64{0.066, 0.022, -0.022, -0.066}
	lengths := [4]float64{0.2, 0.225, 0.21, 0.165}
	for f := range 4 {
		bx := bases[f] * thumbSide * s.fingerW
		ang := (float64(f) - 1.5) * p.spread * -thumbSide
		l := lengths[f] * s.fingerLen[f+1]
		tx, ty := bx+math.Sin(ang)*l, -0.08-math.Cos(ang)*l
		w := fw * (1 - 0.08*float64(f))
		c.capsule(bx, -0.08, tx, ty, w, skin, 1)
		tipx, tipy := bx+math.Sin(ang)*(l-0.018), -0.08-math.Cos(ang)*(l-0.018)
		if p.dorsal {
			nail := [3]float64{245, 215, 205}
			if s.polish {
				nail = [3]float64{190, 30, 50}
			}
			c.ellipse(tipx, tipy, w*0.75, 0.026, ang, nail, 1)
			// Knuckle folds.
			kx, ky := bx+math.Sin(ang)*l*0.45, -0.08-math.Cos(ang)*l*0.45
			c.ellipse(kx, ky, w*0.7, 0.004, ang, scaleCol(skin, 0.75), 0.6)
		} else {
			// Finger pads and joint creases.
			c.ellipse(tipx, tipy+0.004, w*0.7, 0.02, ang, scaleCol(skin, 1.06), 0.5)
			for _, q := range []float64{0.35, 0.65} {
				kx, ky := bx+math.Sin(ang)*l*q, -0.08-math.Cos(ang)*l*q
				c.ellipse(kx, ky, w*0.85, 0.003, ang, scaleCol(skin, 0.7), 0.7)
			}
		}
	}
	// Thumb: from the lower palm, outwards and up.
	tb := 0.085 * thumbSide * s.fingerW
	c.capsule(tb, 0.04, tb+0.11*thumbSide, -0.09, fw*1.15, skin, 1)
	if p.dorsal {
		c.ellipse(tb+0.1*thumbSide, -0.075, fw*0.7, 0.022, 0.7*thumbSide, [3]float64{245, 215, 205}, 0.9)
	} else {
		// A lighter palm with three creases.
		c.ellipse(0, 0.01, 0.09*s.fingerW, 0.1, 0, scaleCol(skin, 1.15), 0.8)
		crease := scaleCol(skin, 0.5)
		for k, y := range []float64{-0.05, -0.015, 0.03} {
			for t := -1.0; t < 1.0; t += 0.1 {
				x0, x1 := t*0.08*s.fingerW, (t+0.1)*0.08*s.fingerW
				curve := func(x float64) float64 { return y + 0.3*x*x*float64(k+1) + 0.1*x*thumbSide }
				c.capsule(x0, curve(x0), x1, curve(x1), 0.004, crease, 0.9)
			}
		}
	}
}
