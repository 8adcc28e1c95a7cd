package handnet

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"hash/crc32"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/handnet/handnet/vision"
)

// blackPNG is a w×h 8-bit RGB PNG of black pixels (~190 KB at 7999²,
// 256 MB once decoded by image/png).
func blackPNG(w, h int) []byte {
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
	ihdr[8], ihdr[9] = 8, 2
	chunk(&out, "IHDR", ihdr)
	var z bytes.Buffer
	zw, _ := zlib.NewWriterLevel(&z, zlib.BestCompression)
	row := make([]byte, 1+3*w)
	for range h {
		zw.Write(row)
	}
	zw.Close()
	chunk(&out, "IDAT", z.Bytes())
	chunk(&out, "IEND", nil)
	return out.Bytes()
}

// TestHeavyLaneKeepsOrdinarySlots: with one decode slot and one queue
// place, a 7999² PNG decoding and a second one waiting fill the heavy lane
// (a third is refused 503), yet an ordinary JPEG is answered 200 meanwhile
// — through one shared gate it would have found the slot and the queue
// full. The server's state is read, not timed: the photo is sent only
// once the first bomb decodes and the second waits, and the result only
// counts if neither bomb was answered before the photo. Every bomb's
// decode memory is given back at the end.
func TestHeavyLaneKeepsOrdinarySlots(t *testing.T) {
	if testing.Short() {
		t.Skip("decodes 7999² PNGs")
	}
	c, hs := testServer(t, Options{MaxConcurrent: 1, MaxQueue: 1})
	bomb, photo := blackPNG(7999, 7999), jpegBytes(t)
	post := func(body []byte, ctype string) int {
		resp, err := http.Post(hs.URL+"/predict", ctype, bytes.NewReader(body))
		if err != nil {
			t.Error(err)
			return 0
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(60 * time.Second); !cond(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 60 s", what)
			}
		}
	}
	for attempt := 1; ; attempt++ {
		codes := make(chan int, 2)
		var answered atomic.Int64
		bombAway := func() { codes <- post(bomb, "image/png"); answered.Add(1) }
		go bombAway()
		waitFor("the first bomb decoding", func() bool { _, used := vision.DecodeMemory(); return used > 0 })
		go bombAway()
		waitFor("the second bomb waiting", func() bool { return c.heavy.waiting.Load()+c.gate.waiting.Load() == 1 })
		third := post(bomb, "image/png")
		ordinary := post(photo, "image/jpeg")
		held := answered.Load() == 0 // both bombs still in the server
		first, second := <-codes, <-codes
		if !held && attempt < 3 {
			t.Logf("attempt %d: a bomb was answered before the photo; again", attempt)
			continue
		}
		if !held {
			t.Fatal("the bombs were never in the server long enough to test the lane")
		}
		if third != http.StatusServiceUnavailable {
			t.Errorf("a third bomb with the heavy lane full: %d, want 503", third)
		}
		if ordinary != http.StatusOK {
			t.Errorf("an ordinary photo while bombs fill the heavy lane: %d, want 200", ordinary)
		}
		if first != http.StatusOK || second != http.StatusOK {
			t.Errorf("the two bombs admitted: %d and %d, want 200 (their decode fits the default budget)", first, second)
		}
		break
	}
	if _, used := vision.DecodeMemory(); used != 0 {
		t.Errorf("%d bytes of decode memory still charged after every answer", used)
	}
}
