package experiment

import (
	"fmt"
	"strconv"

	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/handnet/handnet/vision"
)

// CheckMemory refuses, before any work, a spec whose training batch cannot
// fit: the activations a training step keeps for its backward pass and
// their gradients (model.ActivationBytes in training mode), for
// s.Train.BatchSize images in each of processes processes on this machine,
// against the memory available: a *FieldError of Train.BatchSize. A CUDA
// device is not checked (its allocator reports its own failure), nor a
// device that does not parse (the caller reports that).
func CheckMemory(s Spec, processes int) error {
	dev, err := torch.ParseDevice(s.Device)
	if err != nil || dev.IsCuda() {
		return nil
	}
	cfg := s.Model
	cfg.Width, cfg.Height = s.Width, s.Height
	if cfg.Width <= 0 || cfg.Height <= 0 {
		cfg.Width, cfg.Height = vision.Width, vision.Height
	}
	processes = max(processes, 1)
	// In floats: a batch size near the int64 limit must not wrap around.
	need := float64(model.ActivationBytes(cfg, 1, true)) * float64(s.Train.BatchSize) * float64(processes)
	have := model.AvailableMemory()
	if have <= 0 || need <= float64(have) {
		return nil
	}
	batch := strconv.Itoa(s.Train.BatchSize)
	if processes > 1 {
		batch += fmt.Sprintf(" in each of %d processes", processes)
	}
	return &FieldError{Field: "Train.BatchSize", Value: batch, Machine: true, Fix: "lower {Train.BatchSize}",
		Err: fmt.Errorf("training %s at %dx%d needs an estimated %s GB of activations and gradients, %.1f GB of memory is available",
			cfg.Arch, cfg.Width, cfg.Height, strconv.FormatFloat(need/1e9, 'g', 3, 64), float64(have)/1e9)}
}
