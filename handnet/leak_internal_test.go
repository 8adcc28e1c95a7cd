package handnet

import (
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/handnet/handnet/vision"
	"github.com/sugarme/gotch"
)

func rss() float64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			kb, _ := strconv.ParseFloat(strings.Fields(l)[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// TestForwardDoesNotLeak: thousands of predictions leave the live tensor
// count and the resident memory where they were. (gotch's ops leaked their
// output slots, ~8 KB of RSS per forward pass, until tools/setup fixed them.)
func TestForwardDoesNotLeak(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.safetensors")
	th := torch.NewThread(1)
	err := th.Do(func() error {
		m, err := model.New(model.Config{Arch: "cnn", Dropout: "none", Classes: vision.Classes8.Classes(), Width: vision.Width, Height: vision.Height,
			Mean: vision.Mean, Std: vision.Std}, gotch.CPU)
		if err != nil {
			return err
		}
		defer m.Close()
		return model.SaveCheckpoint(path, m, nil, nil)
	})
	th.Close()
	if err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 3*vision.Width*vision.Height)
	run := func(n int) (float64, int) {
		for range n {
			if _, err := c.forward([][]byte{buf}); err != nil {
				t.Fatal(err)
			}
		}
		debug.FreeOSMemory()
		var live int
		c.th.Do(func() error { live = torch.LiveTensors(); return nil })
		return rss(), live
	}
	rss0, live0 := run(300) // warm-up
	rss1, live1 := run(1200)
	t.Logf("after warm-up: RSS %.1f MiB, %d live tensors; 1200 forwards later: %.1f MiB, %d", rss0, live0, rss1, live1)
	if live1 != live0 {
		t.Errorf("live tensors %d -> %d", live0, live1)
	}
	if rss1-rss0 > 3 {
		t.Errorf("RSS grew %.1f MiB over 1200 forward passes", rss1-rss0)
	}
}
