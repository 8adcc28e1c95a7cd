package model

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/sugarme/gotch"
)

// ActivationBytes estimates the memory a forward pass of batch images
// takes (train: the activations kept for the backward pass and their
// gradients; otherwise the largest tensors alive at once), with headroom
// for libtorch's workspaces. It is an estimate from the layer sizes, good
// to within a factor of about 1.5, for refusing batches that cannot fit
// before any memory is taken.
func ActivationBytes(cfg Config, batch int, train bool) int64 {
	px := float64(cfg.Width) * float64(cfg.Height)
	var perImage float64 // float32 values a image
	switch cfg.Arch {
	case "cnn":
		// Three conv (5×5, no padding) + ReLU + 2×2 pool stages: 16, 32, 64 channels.
		w, h := float64(cfg.Width), float64(cfg.Height)
		for _, ch := range []float64{16, 32, 64} {
			w, h = w-4, h-4
			out := ch * w * h
			if train {
				perImage += 2*out + out/4 // conv and ReLU outputs, the pooled one
			} else {
				perImage = max(perImage, 2*out)
			}
			w, h = w/2, h/2
		}
	default: // resnet18: ~141 values per input pixel kept for backward (conv1 64×H/2×W/2 the largest)
		if train {
			perImage = 141 * px
		} else {
			perImage = 3 * 16 * px
		}
	}
	if train {
		perImage *= 2 // their gradients in the backward pass
	}
	perImage += 3 * px // the input batch
	return int64(1.5 * 4 * perImage * float64(batch))
}

// AvailableMemory is the memory the kernel says can be had without swapping
// (MemAvailable), or 0 where it is not known.
func AvailableMemory() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemAvailable:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err == nil {
				return kb << 10
			}
		}
	}
	return 0
}

// CheckBatchMemory refuses, before any work, a batch whose estimated
// activations (ActivationBytes) exceed the memory available on the CPU
// (a CUDA device is not checked: its allocator reports its own failure).
// what names the flag to lower ("--batch").
func CheckBatchMemory(cfg Config, batch int, train bool, device gotch.Device, what string) error {
	if device.IsCuda() {
		return nil
	}
	need, have := ActivationBytes(cfg, batch, train), AvailableMemory()
	if have > 0 && need > have {
		phase := "inference"
		if train {
			phase = "training"
		}
		return fmt.Errorf("%s %d: %s of %s at %dx%d needs an estimated %.1f GB of activations, %.1f GB of memory is available; lower %s",
			what, batch, phase, cfg.Arch, cfg.Width, cfg.Height, float64(need)/1e9, float64(have)/1e9, what)
	}
	return nil
}
