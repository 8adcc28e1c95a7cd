package vision

import (
	"context"
	"encoding/binary"
	"fmt"
	"runtime/debug"
	"sync"
)

// DefaultDecodeMemory is the process-wide memory all decodes in flight may
// take together, sized for a 2-core server with 4 GB: one 64-megapixel
// 8-bit PNG (256 MB decoded) at a time, with room beside it for ordinary
// photos. SetDecodeMemory (--decode-memory) changes it.
const DefaultDecodeMemory = 384 << 20

// bigDecode is the cost above which a decode gives its memory back to the
// operating system when it ends (a full GC and scavenge, a few ms): the
// heap of a server that met one bomb does not stay at the bomb's size.
const bigDecode = 64 << 20

// decodeBudget is a weighted semaphore over bytes. A waiter is granted as
// soon as its cost fits, so a large decode waiting never blocks small ones
// behind it.
type decodeBudget struct {
	mu      sync.Mutex
	size    int64
	used    int64
	changed chan struct{} // closed and replaced whenever memory is released
}

var budget = &decodeBudget{size: DefaultDecodeMemory, changed: make(chan struct{})}

// SetDecodeMemory sets the process-wide decode memory budget in bytes (0 or
// less: DefaultDecodeMemory). An image whose decode would cost more than
// the whole budget is refused with a *MemoryError.
func SetDecodeMemory(n int64) {
	if n <= 0 {
		n = DefaultDecodeMemory
	}
	budget.mu.Lock()
	budget.size = n
	close(budget.changed)
	budget.changed = make(chan struct{})
	budget.mu.Unlock()
}

// DecodeMemory returns the budget and the bytes charged against it now.
func DecodeMemory() (size, used int64) {
	budget.mu.Lock()
	defer budget.mu.Unlock()
	return budget.size, budget.used
}

// MemoryError is an image whose decode would take more memory than the
// whole decode budget allows (a PNG or GIF decompression bomb below the
// pixel budget, say).
type MemoryError struct {
	What      string // "7999x7999 8-bit RGB PNG"
	Cost, Max int64
}

func (e *MemoryError) Error() string {
	return fmt.Sprintf("decoding this %s would take %d MB, over the decode memory budget of %d MB (raise --decode-memory to allow it)",
		e.What, e.Cost>>20, e.Max>>20)
}

// acquire charges cost against the budget, waiting while it does not fit,
// until ctx ends. release gives it back, returning a big decode's memory to
// the operating system first.
func (b *decodeBudget) acquire(ctx context.Context, cost int64, what string) (release func(), err error) {
	for {
		b.mu.Lock()
		if cost > b.size {
			b.mu.Unlock()
			return nil, &MemoryError{What: what, Cost: cost, Max: b.size}
		}
		if b.used+cost <= b.size {
			b.used += cost
			b.mu.Unlock()
			var once sync.Once
			return func() { once.Do(func() { b.release(cost) }) }, nil
		}
		wait := b.changed
		b.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Charge charges cost bytes of a decode handnet does outside the
// Preprocessor (a photo decoded for display, say) against the process-wide
// budget, waiting until it fits or ctx ends; call release when its memory
// is garbage.
func Charge(ctx context.Context, cost int64, what string) (release func(), err error) {
	return budget.acquire(ctx, cost, what)
}

func (b *decodeBudget) release(cost int64) {
	if cost >= bigDecode {
		debug.FreeOSMemory()
	}
	b.mu.Lock()
	b.used -= cost
	close(b.changed)
	b.changed = make(chan struct{})
	b.mu.Unlock()
}

// Cost is what decoding one encoded image takes in memory, read from its
// header alone.
type Cost struct {
	Format Format
	W, H   int
	Bytes  int64  // peak memory of the decode and resize
	What   string // for messages: "7999x7999 8-bit RGB PNG"
}

// Cost reads an encoded image's header and returns what decoding it with
// this Preprocessor will take: the decoder's full-size image for PNG and
// GIF (Go's decoders hold the whole picture), the DCT-scaled output for a
// baseline JPEG, plus every coefficient for a progressive one (libjpeg
// buffers them all), plus the resize's intermediate rows. It checks the
// pixel budget too.
func (p *Preprocessor) Cost(data []byte) (Cost, error) {
	format, ok := Sniff(data)
	if !ok {
		return Cost{}, fmt.Errorf("not an image handnet reads (JPEG, PNG or GIF): starts with % x", data[:min(len(data), 8)])
	}
	c := Cost{Format: format}
	var perPixel float64 // bytes a pixel of the full-size image
	switch format {
	case PNG:
		// IHDR: width, height, bit depth, colour type, …, interlace.
		if len(data) < 29 || string(data[12:16]) != "IHDR" {
			return Cost{}, fmt.Errorf("bad png header: no IHDR chunk first")
		}
		w, h := binary.BigEndian.Uint32(data[16:]), binary.BigEndian.Uint32(data[20:])
		if w == 0 || h == 0 || w > 1<<30 || h > 1<<30 {
			return Cost{}, fmt.Errorf("bad png header: size %dx%d", w, h)
		}
		c.W, c.H = int(w), int(h)
		depth, ctype, interlace := data[24], data[25], data[28]
		kind := map[byte]string{0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}[ctype]
		switch {
		case depth == 16:
			perPixel = 8 // RGBA64 / NRGBA64 (Gray16: 2, charged as the worst)
		case ctype == 3:
			perPixel = 1 // Paletted
		default:
			perPixel = 4 // RGBA / NRGBA (a grey with tRNS becomes NRGBA too)
		}
		if interlace != 0 {
			perPixel *= 2 // every Adam7 pass is decoded apart, then copied
			kind += " interlaced"
		}
		c.What = fmt.Sprintf("%dx%d %d-bit %s PNG", w, h, depth, kind)
	case GIF:
		if len(data) < 10 {
			return Cost{}, fmt.Errorf("bad gif header: %d bytes", len(data))
		}
		c.W, c.H = int(binary.LittleEndian.Uint16(data[6:])), int(binary.LittleEndian.Uint16(data[8:]))
		perPixel = 1 // the first frame, Paletted, within the logical screen
		c.What = fmt.Sprintf("%dx%d GIF", c.W, c.H)
	case JPEG:
		sof, err := jpegFrame(data)
		if err != nil {
			return Cost{}, err
		}
		c.W, c.H = sof.w, sof.h
		num, denom := 1, 1
		if !p.Exact {
			num, denom = jpegScale(c.W, c.H, 2*p.W, 2*p.H)
		}
		sw, sh := (c.W*num+denom-1)/denom, (c.H*num+denom-1)/denom
		c.Bytes = 4 * int64(sw) * int64(sh) // RGB or CMYK output
		kind := "baseline"
		if sof.progressive {
			// 2 bytes a coefficient, each component at its sampling.
			c.Bytes += int64(2 * sof.coeffsPerPixel * float64(c.W) * float64(c.H))
			kind = "progressive"
		}
		c.What = fmt.Sprintf("%dx%d %s JPEG", c.W, c.H, kind)
	}
	if c.W <= 0 || c.H <= 0 {
		return Cost{}, fmt.Errorf("bad %s header: size %dx%d", format, c.W, c.H)
	}
	if int64(c.W)*int64(c.H) > p.Limits.pixels() {
		return Cost{}, &PixelsError{W: c.W, H: c.H, Max: p.Limits.pixels()}
	}
	c.Bytes += int64(perPixel * float64(c.W) * float64(c.H))
	c.Bytes += 3 * int64(c.H) * int64(p.W) // the resize's horizontal pass
	return c, nil
}

// jpegSOF is what a JPEG's frame header says.
type jpegSOF struct {
	w, h           int
	progressive    bool
	coeffsPerPixel float64 // DCT coefficients per full-size pixel, all components
}

// jpegFrame finds a JPEG's frame header (SOFn) before its first scan.
func jpegFrame(data []byte) (jpegSOF, error) {
	i := 2
	for i+4 <= len(data) {
		if data[i] != 0xFF {
			return jpegSOF{}, fmt.Errorf("bad JPEG header: no marker at byte %d", i)
		}
		m := data[i+1]
		if m == 0xFF { // fill byte
			i++
			continue
		}
		if m == 0x01 || m >= 0xD0 && m <= 0xD8 { // no length
			i += 2
			continue
		}
		n := int(binary.BigEndian.Uint16(data[i+2:]))
		if n < 2 || i+2+n > len(data) {
			return jpegSOF{}, fmt.Errorf("truncated JPEG: marker 0x%02x at byte %d runs past the end", m, i)
		}
		seg := data[i+4 : i+2+n]
		if m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC {
			if len(seg) < 6 {
				return jpegSOF{}, fmt.Errorf("bad JPEG header: short frame header")
			}
			s := jpegSOF{h: int(binary.BigEndian.Uint16(seg[1:])), w: int(binary.BigEndian.Uint16(seg[3:]))}
			s.progressive = m == 0xC2 || m == 0xC6 || m == 0xCA || m == 0xCE
			nc := int(seg[5])
			if nc == 0 || len(seg) < 6+3*nc {
				return jpegSOF{}, fmt.Errorf("bad JPEG header: frame header of %d components", nc)
			}
			var hmax, vmax int
			for k := range nc {
				f := seg[6+3*k+1]
				hmax, vmax = max(hmax, int(f>>4)), max(vmax, int(f&15))
			}
			if hmax == 0 || vmax == 0 {
				return jpegSOF{}, fmt.Errorf("bad JPEG header: sampling factor 0")
			}
			// Per full-size pixel, a component sampled h×v of hmax×vmax
			// holds h·v/(hmax·vmax) coefficients (whole blocks: a little more).
			var num int
			for k := range nc {
				f := seg[6+3*k+1]
				num += int(f>>4) * int(f&15)
			}
			s.coeffsPerPixel = 1.1 * float64(num) / float64(hmax*vmax)
			return s, nil
		}
		if m == 0xDA {
			break
		}
		i += 2 + n
	}
	return jpegSOF{}, fmt.Errorf("bad JPEG header: no frame header before the image data")
}
