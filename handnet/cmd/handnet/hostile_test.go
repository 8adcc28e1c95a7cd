package main

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/jpeg"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
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

// TestPredictPNGBombWithinMemory: predict on a 7999² PNG answers (or
// refuses) with a peak RSS of at most 500 MB; a missing file among good
// ones is reported and skipped (exit 1, the good ones answered).
func TestPredictPNGBombWithinMemory(t *testing.T) {
	ckpt := testCheckpoint(t)
	dir := t.TempDir()
	bomb := filepath.Join(dir, "bomb.png")
	os.WriteFile(bomb, blackPNG(7999, 7999), 0o644)
	p := start(t, nil, "predict", "--checkpoint", ckpt, "--threads", "1", bomb)
	peak := watchPeakRSS(p.cmd.Process.Pid)
	code := p.wait(t, 120*time.Second)
	rss := peak()
	t.Logf("predict 7999x7999 PNG: exit %d, peak RSS %d MB", code, rss>>20)
	if code > 1 || rss > 500<<20 {
		t.Errorf("exit %d, peak RSS %d MB: want 0 or 1 within 500 MB\n%s", code, rss>>20, p.out.String())
	}

	var jb bytes.Buffer
	jpeg.Encode(&jb, image.NewRGBA(image.Rect(0, 0, 200, 150)), nil)
	good1, good2 := filepath.Join(dir, "good1.jpg"), filepath.Join(dir, "good2.jpg")
	os.WriteFile(good1, jb.Bytes(), 0o644)
	os.WriteFile(good2, jb.Bytes(), 0o644)
	p = start(t, nil, "predict", "--checkpoint", ckpt, "--threads", "1", good1, filepath.Join(dir, "nonexistent.jpg"), good2)
	code = p.wait(t, 60*time.Second)
	out := p.out.String()
	if code != 1 || !strings.Contains(out, "skipped "+filepath.Join(dir, "nonexistent.jpg")) || !strings.Contains(out, good1+"\t") || !strings.Contains(out, good2+"\t") {
		t.Errorf("a missing file among two good ones: exit %d, want 1 with both good ones answered and the missing one skipped:\n%s", code, out)
	}

	// explain: the same base name in two folders writes two files.
	mix := filepath.Join(dir, "mix")
	os.MkdirAll(filepath.Join(mix, "sub"), 0o755)
	os.WriteFile(filepath.Join(mix, "rgb.jpg"), jb.Bytes(), 0o644)
	os.WriteFile(filepath.Join(mix, "sub", "rgb.jpg"), jb.Bytes(), 0o644)
	out2 := filepath.Join(dir, "cams")
	if code := run([]string{"explain", "--checkpoint", ckpt, "--threads", "1", "--out", out2, mix}); code != 0 {
		t.Fatalf("explain exit %d", code)
	}
	for _, f := range []string{"rgb.cam.png", filepath.Join("sub", "rgb.cam.png")} {
		if _, err := os.Stat(filepath.Join(out2, f)); err != nil {
			t.Errorf("explain did not write %s: %v", f, err)
		}
	}
	// Two files that would write one name: refused before any work.
	os.WriteFile(filepath.Join(mix, "rgb.png"), blackPNG(64, 64), 0o644)
	if code := run([]string{"explain", "--checkpoint", ckpt, "--out", out2, mix}); code != 2 {
		t.Errorf("explain of rgb.jpg and rgb.png into one folder: exit %d, want 2", code)
	}
	if code := run([]string{"serve", "--checkpoint", ckpt, "--threads", "-3"}); code != 2 {
		t.Errorf("serve --threads -3: exit %d, want 2", code)
	}
}

// watchPeakRSS samples the process's own peak RSS (VmHWM in
// /proc/PID/status) every 5 ms until it exits; the returned function
// gives the largest value seen, in bytes. (The rusage of a child started
// by this test process is no use: Go starts children with vfork, and the
// kernel carries the parent's high-water mark, over a GB in a full test
// run, into the child's ru_maxrss at exec.)
func watchPeakRSS(pid int) func() int64 {
	var max atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			hwm := procStatus(pid, "VmHWM")
			if hwm == 0 { // exited: a zombie's memory is gone
				return
			}
			if hwm > max.Load() {
				max.Store(hwm)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return func() int64 { <-done; return max.Load() }
}
