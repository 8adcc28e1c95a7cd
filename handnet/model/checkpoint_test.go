package model

import (
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/sugarme/gotch"
)

// rawSafetensors writes a safetensors file from a header and data, as a
// hostile writer could.
func rawSafetensors(t *testing.T, path string, header map[string]any, data []byte) {
	t.Helper()
	h, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(h)))
	b = append(append(b, h...), data...)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func testConfig() Config {
	return Config{Arch: "cnn", Dropout: "none", Classes: []string{"a", "b", "c"}, Width: 64, Height: 48,
		Mean: [3]float32{0.5, 0.5, 0.5}, Std: [3]float32{0.2, 0.2, 0.2}}
}

func TestHostileCheckpoints(t *testing.T) {
	dir := t.TempDir()
	th := torch.NewThread(1)
	defer th.Close()
	good := filepath.Join(dir, "good.safetensors")
	if err := th.Do(func() error {
		m, err := New(testConfig(), gotch.CPU)
		if err != nil {
			return err
		}
		defer m.Close()
		return SaveCheckpoint(good, m, nil, nil)
	}); err != nil {
		t.Fatal(err)
	}
	meta := func(mutate func(*Config)) map[string]any {
		c := testConfig()
		mutate(&c)
		b, _ := json.Marshal(c)
		return map[string]any{"__metadata__": map[string]string{"format": "handnet", "format_version": "1", "model": string(b)}}
	}
	cases := map[string]struct {
		write func(path string)
		want  string
	}{
		"huge-shape": {func(p string) {
			rawSafetensors(t, p, map[string]any{"x": map[string]any{"dtype": "F32", "shape": []uint64{0, 1<<64 - 1}, "data_offsets": []int{0, 0}}}, nil)
		}, "impossible shape"},
		"short-data": {func(p string) {
			rawSafetensors(t, p, map[string]any{"x": map[string]any{"dtype": "F32", "shape": []uint64{4}, "data_offsets": []int{0, 8}}}, make([]byte, 8))
		}, "safetensors"},
		"std-zero": {func(p string) {
			h := meta(func(c *Config) { c.Std = [3]float32{0, 1, 1} })
			rawSafetensors(t, p, h, nil)
		}, "each std in [0.01, 100]"},
		"std-tiny": {func(p string) {
			rawSafetensors(t, p, meta(func(c *Config) { c.Std = [3]float32{1e-30, 1, 1} }), nil)
		}, "each std in [0.01, 100]"},
		"mean-huge": {func(p string) {
			rawSafetensors(t, p, meta(func(c *Config) { c.Mean = [3]float32{1e30, 0, 0} }), nil)
		}, "each mean in [-1, 2]"},
		"nan-weight": {func(p string) {
			h := meta(func(*Config) {})
			h["fc.weight"] = map[string]any{"dtype": "F32", "shape": []uint64{2}, "data_offsets": []int{0, 8}}
			rawSafetensors(t, p, h, []byte{0, 0, 0x80, 0x3f, 0, 0, 0xc0, 0x7f}) // 1, NaN
		}, "tensor fc.weight holds NaN at element 1: non-finite weights are refused"},
		"inf-weight-f16": {func(p string) {
			h := meta(func(*Config) {})
			h["a"] = map[string]any{"dtype": "F16", "shape": []uint64{1}, "data_offsets": []int{0, 2}}
			rawSafetensors(t, p, h, []byte{0, 0xfc}) // -Inf
		}, "tensor a holds -Inf at element 0"},
		"nan-mean": {func(p string) {
			b, _ := json.Marshal(testConfig())
			s := strings.Replace(string(b), `"mean":[0.5,0.5,0.5]`, `"mean":[0.5,1e999,0.5]`, 1)
			rawSafetensors(t, p, map[string]any{"__metadata__": map[string]string{"format": "handnet", "format_version": "1", "model": s}}, nil)
		}, "bad model description"},
		"one-class": {func(p string) {
			rawSafetensors(t, p, meta(func(c *Config) { c.Classes = []string{"a"} }), nil)
		}, "at least 2 classes"},
		"giant-input": {func(p string) {
			rawSafetensors(t, p, meta(func(c *Config) { c.Width = 1 << 20 }), nil)
		}, "want 40 to 4096"},
		"arch": {func(p string) {
			rawSafetensors(t, p, meta(func(c *Config) { c.Arch = "vgg" }), nil)
		}, `architecture "vgg"`},
		"pth": {func(p string) {
			os.WriteFile(p, []byte("PK\x03\x04 a zip written by torch.save"), 0o644)
		}, "is a PyTorch file (torch.save), not a handnet checkpoint"},
		"header-too-large": {func(p string) {
			b := binary.LittleEndian.AppendUint64(nil, 1<<40)
			os.WriteFile(p, append(b, "{}"...), 0o644)
		}, "its header would be 1099511627776 bytes"},
		"legacy-pth": {func(p string) {
			// What the issue saw: a legacy .pth read as safetensors.
			b := binary.LittleEndian.AppendUint64(nil, 578712552184433488)
			os.WriteFile(p, append(b, "{}"...), 0o644)
		}, "is a PyTorch file"},
		"fifo": {func(p string) {
			if err := syscall.Mkfifo(p, 0o644); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(dir, name+".safetensors")
			tc.write(p)
			var err error
			th.Do(func() error { _, err = ReadCheckpoint(p); return nil })
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") || strings.Contains(err.Error(), "frame #") {
				t.Errorf("not one line: %q", err)
			}
		})
	}
	// Classes that do not match the head: the weights do not fit the model.
	b, _ := os.ReadFile(good)
	n := binary.LittleEndian.Uint64(b)
	var hdr map[string]any
	json.Unmarshal(b[8:8+n], &hdr)
	c := testConfig()
	c.Classes = []string{"a", "b", "c", "d"}
	mb, _ := json.Marshal(c)
	hdr["__metadata__"].(map[string]any)["model"] = string(mb)
	wrong := filepath.Join(dir, "wrong-head.safetensors")
	rawSafetensors(t, wrong, hdr, b[8+n:])
	err := th.Do(func() error {
		ck, err := ReadCheckpoint(wrong)
		if err != nil {
			return err
		}
		defer ck.Drop()
		m, err := LoadModel(ck, gotch.CPU)
		if err == nil {
			m.Close()
		}
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "fc2.weight (model [4 256], file [3 256])") {
		t.Errorf("4 classes over a 3-class head: %v", err)
	}
}

// TestSmallHeaderIsNotAPickle: a checkpoint whose header is 640 bytes long
// starts with 0x80 0x02, a pickle's first bytes: it is still read.
func TestSmallHeaderIsNotAPickle(t *testing.T) {
	th := torch.NewThread(1)
	defer th.Close()
	for n := 400; n < 700; n++ {
		p := filepath.Join(t.TempDir(), "c.safetensors")
		meta := map[string]any{"__metadata__": map[string]string{"pad": strings.Repeat("x", n)}, "w": map[string]any{"dtype": "F32", "shape": []int{1}, "data_offsets": []int{0, 4}}}
		rawSafetensors(t, p, meta, make([]byte, 4))
		b, _ := os.ReadFile(p)
		if b[0] != 0x80 || b[1] != 0x02 {
			continue
		}
		var err error
		th.Do(func() error { _, _, err = ReadSafetensors(p); return nil })
		if err != nil {
			t.Fatalf("header of %d bytes: %v", binary.LittleEndian.Uint64(b), err)
		}
		return
	}
	t.Fatal("no header length gave the bytes 0x80 0x02")
}
