package vision

import (
	"bytes"
	"compress/zlib"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"image"
	"image/color"
	"image/gif"
	"testing"
	"time"
)

// pngBomb writes a w×h PNG of black pixels (colour type ctype, bit depth
// depth) straight from zlib: a 7999² RGB one is ~190 KB and costs 256 MB to
// decode with image/png.
func pngBomb(t testing.TB, w, h int, depth, ctype byte) []byte {
	t.Helper()
	chunk := func(b *bytes.Buffer, typ string, data []byte) {
		binary.Write(b, binary.BigEndian, uint32(len(data)))
		b.WriteString(typ)
		b.Write(data)
		binary.Write(b, binary.BigEndian, crc32.ChecksumIEEE(append([]byte(typ), data...)))
	}
	var out bytes.Buffer
	out.WriteString("\x89PNG\r\n\x1a\n")
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr, uint32(w))
	binary.BigEndian.PutUint32(ihdr[4:], uint32(h))
	ihdr[8], ihdr[9] = depth, ctype
	chunk(&out, "IHDR", ihdr)
	channels := map[byte]int{0: 1, 2: 3, 4: 2, 6: 4}[ctype]
	row := make([]byte, 1+w*channels*int(depth)/8)
	var z bytes.Buffer
	zw, _ := zlib.NewWriterLevel(&z, zlib.BestCompression)
	for range h {
		zw.Write(row)
	}
	zw.Close()
	chunk(&out, "IDAT", z.Bytes())
	chunk(&out, "IEND", nil)
	return out.Bytes()
}

func TestPNGBombUnderThePixelBudget(t *testing.T) {
	bomb := pngBomb(t, 7999, 7999, 8, 2)
	t.Logf("7999x7999 RGB PNG: %d bytes", len(bomb))
	p, err := NewPreprocessor(Width, Height)
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.Cost(bomb)
	if err != nil {
		t.Fatal(err)
	}
	if c.Bytes < 4*7999*7999 || c.Bytes > DefaultDecodeMemory {
		t.Fatalf("cost %d: want the full-size RGBA (%d) and within the default budget", c.Bytes, 4*7999*7999)
	}
	// A budget below the cost: refused at once, before any pixel is decoded.
	SetDecodeMemory(64 << 20)
	defer SetDecodeMemory(0)
	start := time.Now()
	err = p.Bytes(bomb, make([]byte, p.Size()))
	var me *MemoryError
	if !errors.As(err, &me) || time.Since(start) > time.Second {
		t.Fatalf("64 MB budget: got %v after %v, want a MemoryError at once", err, time.Since(start))
	}
	t.Log(err)
	// The default budget: decoded, and the answer is right (all black).
	SetDecodeMemory(0)
	dst := make([]byte, p.Size())
	for i := range dst {
		dst[i] = 7
	}
	if err := p.Bytes(bomb, dst); err != nil {
		t.Fatal(err)
	}
	if bytes.Count(dst, []byte{0}) != len(dst) {
		t.Fatal("a black PNG did not preprocess to black")
	}
	if _, used := DecodeMemory(); used != 0 {
		t.Fatalf("%d bytes still charged after the decode", used)
	}
	// 16 bits a channel: 512 MB decoded, over the default budget.
	err = p.Bytes(pngBomb(t, 7999, 7999, 16, 2), dst)
	if !errors.As(err, &me) {
		t.Fatalf("16-bit 7999x7999 PNG: got %v, want a MemoryError", err)
	}
}

func TestGIFBombCharged(t *testing.T) {
	img := image.NewPaletted(image.Rect(0, 0, 7999, 7999), color.Palette{color.Black, color.White})
	var b bytes.Buffer
	if err := gif.Encode(&b, img, nil); err != nil {
		t.Fatal(err)
	}
	t.Logf("7999x7999 GIF: %d bytes", b.Len())
	p, _ := NewPreprocessor(Width, Height)
	c, err := p.Cost(b.Bytes())
	if err != nil || c.Bytes < 7999*7999 {
		t.Fatalf("cost %+v, %v: want at least the paletted frame", c, err)
	}
	SetDecodeMemory(32 << 20)
	defer SetDecodeMemory(0)
	var me *MemoryError
	if err := p.Bytes(b.Bytes(), make([]byte, p.Size())); !errors.As(err, &me) {
		t.Fatalf("32 MB budget: got %v, want a MemoryError", err)
	}
}

// A large decode waiting for the budget does not hold back a small one.
func TestDecodeBudgetSmallPassLarge(t *testing.T) {
	SetDecodeMemory(100)
	defer SetDecodeMemory(0)
	rel, err := budget.acquire(context.Background(), 60, "held")
	if err != nil {
		t.Fatal(err)
	}
	bigDone := make(chan error, 1)
	go func() {
		r, err := budget.acquire(context.Background(), 90, "big")
		if err == nil {
			r()
		}
		bigDone <- err
	}()
	time.Sleep(20 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	small, err := budget.acquire(ctx, 30, "small")
	if err != nil {
		t.Fatalf("a small decode waited behind a big one: %v", err)
	}
	small()
	select {
	case err := <-bigDone:
		t.Fatalf("the big decode ran while 60 of 100 were held: %v", err)
	default:
	}
	rel()
	if err := <-bigDone; err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel2()
	r, _ := budget.acquire(context.Background(), 100, "all")
	if _, err := budget.acquire(ctx2, 1, "one"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a full budget: got %v, want the context's deadline", err)
	}
	r()
}
