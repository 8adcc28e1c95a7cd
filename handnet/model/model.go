// Package model holds the study's networks — the seed CNN (cnn.go) and
// torchvision's ResNet-18 (resnet.go) — with their configuration, the
// freeze scenarios of transfer learning, and the checkpoint format
// (checkpoint.go). It imports only the torch runtime: data loading, training
// and serving build on it.
//
// Floor 2 (model) of handnet's layering: it imports packages of floors 0–2 only
// (README, "Packages"; tools/floors checks it).
package model

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sort"
	"strings"

	"github.com/handnet/handnet/handnet/runtime/native"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/nn"
	"github.com/sugarme/gotch/ts"
)

// Config describes a model: enough to rebuild it from a checkpoint.
type Config struct {
	Arch      string `json:"arch"`              // "cnn" or "resnet18"
	Dropout   string `json:"dropout,omitempty"` // CNN dropout preset
	BatchNorm bool   `json:"batch_norm,omitempty"`
	// ResNet-18 transfer learning: the published weights it started from
	// (empty: trained from scratch), which parameters train (FreezeFC,
	// FreezeLayer4, FreezeNone), and whether frozen BatchNorm layers keep
	// their running statistics.
	Pretrained string `json:"pretrained,omitempty"`
	Freeze     string `json:"freeze,omitempty"`
	FreezeBN   bool   `json:"freeze_bn,omitempty"`
	// AllBNFrozen runs every BatchNorm layer of ResNet-18 with its running
	// statistics, trained or not (torchvision's FrozenBatchNorm2d, as
	// detection models use): results then do not depend on how a batch is
	// split over processes.
	AllBNFrozen bool       `json:"all_bn_frozen,omitempty"`
	Classes     []string   `json:"classes"`
	Width       int        `json:"width"`
	Height      int        `json:"height"`
	Mean        [3]float32 `json:"mean"`
	Std         [3]float32 `json:"std"`
	// ExactDecode: the training images were decoded at full resolution
	// (--exact); serving decodes the same way.
	ExactDecode bool `json:"exact_decode,omitempty"`
}

// MaxSide is the largest input width or height a model may have.
const MaxSide = 4096

// Validate checks a configuration, as read from a checkpoint or given to
// New: a known architecture and dropout preset or freeze scenario, at least
// two distinct class names, an input size of 40 to MaxSide pixels a side,
// and a finite normalisation with std > 0.
func (c Config) Validate() error {
	switch c.Arch {
	case "cnn":
		if _, err := ParseDropout(c.Dropout); err != nil {
			return err
		}
	case "resnet18":
		switch c.Freeze {
		case "", FreezeFC, FreezeLayer4, FreezeNone:
		default:
			return fmt.Errorf("freeze %q: want fc, layer4 or none", c.Freeze)
		}
	default:
		return fmt.Errorf("architecture %q: want one of %v", c.Arch, Archs)
	}
	if len(c.Classes) < 2 {
		return fmt.Errorf("model needs at least 2 classes, got %d", len(c.Classes))
	}
	seen := map[string]bool{}
	for _, n := range c.Classes {
		if strings.TrimSpace(n) == "" || seen[n] {
			return fmt.Errorf("class names %q: want distinct, non-empty names", c.Classes)
		}
		seen[n] = true
	}
	if c.Width < 40 || c.Height < 40 || c.Width > MaxSide || c.Height > MaxSide {
		return fmt.Errorf("input %dx%d: want 40 to %d pixels a side (three 5x5 conv + pool stages need 40x40)", c.Width, c.Height, MaxSide)
	}
	for i := range 3 {
		m, sd := float64(c.Mean[i]), float64(c.Std[i])
		// Pixels are 0..1: a mean far outside or a std near 0 (1e-30) turns
		// every image into huge inputs and a probability of 1.
		if !(m >= MinMean && m <= MaxMean) || !(sd >= MinStd && sd <= MaxStd) {
			return fmt.Errorf("normalisation mean %v std %v: want each mean in [%g, %g] and each std in [%g, %g] (pixels are scaled to 0..1)",
				c.Mean, c.Std, MinMean, MaxMean, MinStd, MaxStd)
		}
	}
	return nil
}

// Sane normalisation for pixels scaled to 0..1 (Config.Validate).
const (
	MinMean, MaxMean = -1.0, 2.0
	MinStd, MaxStd   = 0.01, 100.0
)

// Net is a network, split where Grad-CAM looks: Features computes the last
// convolutional block's activations, Head the logits from them. Both put
// their intermediate tensors in the scope they are given.
type Net interface {
	Features(s *torch.Scope, x *ts.Tensor, train bool) *ts.Tensor
	Head(s *torch.Scope, a *ts.Tensor, train bool) *ts.Tensor
}

// Model is a network with its parameters.
type Model struct {
	Config Config
	VS     *nn.VarStore
	Net    Net
	named  []NamedTensor

	precision    Precision
	channelsLast bool
}

// Precision is the arithmetic of a forward pass: fp32, or mixed precision
// (autocast) with bf16 or fp16 for the convolutions and matrix products.
// Weights, gradients and optimizer state stay fp32 in every case.
type Precision string

// The precisions Forward runs in.
const (
	FP32 Precision = "fp32"
	BF16 Precision = "bf16"
	FP16 Precision = "fp16"
)

// ParsePrecision reads "fp32", "bf16" or "fp16".
func ParsePrecision(s string) (Precision, error) {
	switch p := Precision(strings.ToLower(strings.TrimSpace(s))); p {
	case FP32, BF16, FP16:
		return p, nil
	case "":
		return FP32, nil
	}
	return "", fmt.Errorf("precision %q: want fp32, bf16 or fp16", s)
}

func (p Precision) dtype() gotch.DType {
	if p == FP16 {
		return gotch.Half
	}
	return gotch.BFloat16
}

// ErrFP16OnCPU says that fp16 was asked for on the CPU, whose autocast
// computes in bf16 only.
var ErrFP16OnCPU = errors.New("fp16 needs a CUDA device (the CPU's autocast runs bf16 only): use bf16 or fp32")

// Check says whether p can run on device.
func (p Precision) Check(device gotch.Device) error {
	if p == FP16 && !device.IsCuda() {
		return ErrFP16OnCPU
	}
	return nil
}

// SetPrecision makes Forward run in p (see Precision.Check).
func (m *Model) SetPrecision(p Precision) error {
	if _, err := ParsePrecision(string(p)); err != nil {
		return err
	}
	if err := p.Check(m.VS.Device()); err != nil {
		return fmt.Errorf("precision %s: %w", p, err)
	}
	if p != FP32 && p != "" {
		// Enter and leave once: an unsupported build fails here, not in Forward.
		if err := native.Autocast(m.VS.Device(), p.dtype(), func() error { return nil }); err != nil {
			return fmt.Errorf("precision %s: %w", p, err)
		}
	}
	m.precision = p
	return nil
}

// Precision returns the precision Forward runs in.
func (m *Model) Precision() Precision {
	if m.precision == "" {
		return FP32
	}
	return m.precision
}

// SetChannelsLast lays the convolution weights out channels last (NHWC in
// memory) and makes Forward feed inputs that way, which oneDNN and cuDNN
// run faster for many convolutions (and is what bf16 tensor cores want); off
// lays them back out NCHW. Values, checkpoints and gradients' meaning are
// unchanged.
func (m *Model) SetChannelsLast(on bool) error {
	err := torch.NoGrad(func() error {
		for _, nt := range m.Named() {
			if err := native.SetChannelsLast(nt.Tensor, on); err != nil {
				return fmt.Errorf("%s: %w", nt.Name, err)
			}
		}
		return nil
	})
	if err == nil {
		m.channelsLast = on
	}
	return err
}

// ChannelsLast says whether the model runs channels last.
func (m *Model) ChannelsLast() bool { return m.channelsLast }

// Archs lists the architectures New builds.
var Archs = []string{"cnn", "resnet18"}

// New builds a freshly initialised model on device. Call it on a torch
// thread.
func New(cfg Config, device gotch.Device) (*Model, error) {
	if cfg.Mean == ([3]float32{}) && cfg.Std == ([3]float32{}) {
		cfg.Std = [3]float32{1, 1, 1} // none given: identity normalisation
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	vs := nn.NewVarStore(device)
	m := &Model{Config: cfg, VS: vs}
	switch cfg.Arch {
	case "cnn":
		d, err := ParseDropout(cfg.Dropout)
		if err != nil {
			return nil, err
		}
		m.Net = NewCNN(vs.Root(), cfg.Height, cfg.Width, len(cfg.Classes), d, cfg.BatchNorm)
	case "resnet18":
		switch cfg.Freeze {
		case "":
			m.Config.Freeze = FreezeNone
		case FreezeFC, FreezeLayer4, FreezeNone:
		default:
			return nil, fmt.Errorf("freeze %q: want fc, layer4 or none", cfg.Freeze)
		}
		r := NewResNet18(vs.Root(), len(cfg.Classes))
		freeze, freezeBN := m.Config.Freeze, cfg.FreezeBN
		r.frozenBN = func(name string) bool { return freezeBN && !Trains(freeze, name+".weight") }
		r.allBNFrozen = cfg.AllBNFrozen
		m.Net = r
	default:
		return nil, fmt.Errorf("architecture %q: want one of %v", cfg.Arch, Archs)
	}
	if err := m.resetParameters(); err != nil {
		return nil, err
	}
	m.applyFreeze()
	return m, nil
}

// applyFreeze turns gradients off for the parameters the freeze scenario
// keeps fixed (it does nothing for other architectures).
func (m *Model) applyFreeze() {
	if m.Config.Freeze == "" {
		return
	}
	for _, nt := range m.Named() {
		if !Trains(m.Config.Freeze, nt.Name) && nt.Tensor.MustRequiresGrad() {
			nt.Tensor.MustRequiresGrad_(false)
		}
	}
}

// resetParameters initialises convolution and linear layers as PyTorch
// does (kaiming_uniform with a=√5: weights and biases uniform in
// ±1/√fan_in). gotch v0.9.1's Kaiming initialiser draws from N(0, 1)
// instead, which makes the study's CNN start with losses in the millions.
func (m *Model) resetParameters() error {
	named := m.Named()
	byName := map[string]*ts.Tensor{}
	for _, nt := range named {
		byName[nt.Name] = nt.Tensor
	}
	return torch.NoGrad(func() error {
		for _, nt := range named {
			shape := nt.Tensor.MustSize()
			if len(shape) < 2 || !strings.HasSuffix(nt.Name, ".weight") {
				continue
			}
			fanIn := int64(1)
			for _, d := range shape[1:] {
				fanIn *= d
			}
			bound := 1 / math.Sqrt(float64(fanIn))
			if err := nt.Tensor.Uniform_(-bound, bound); err != nil {
				return err
			}
			if b, ok := byName[strings.TrimSuffix(nt.Name, ".weight")+".bias"]; ok {
				if err := b.Uniform_(-bound, bound); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// Forward runs the network in evaluation or training mode and returns the
// logits (float32 whatever the precision); every intermediate tensor is
// freed. Under mixed precision only the forward pass runs in autocast, as
// PyTorch recommends: the loss and backward pass run outside it.
func (m *Model) Forward(x *ts.Tensor, train bool) *ts.Tensor {
	s := torch.NewScope()
	defer s.Close()
	if m.channelsLast && x.Dim() == 4 && !native.IsChannelsLast(x) {
		if cl, err := native.ChannelsLast(x); err == nil {
			x = s.T(cl)
		}
	}
	if p := m.Precision(); p != FP32 {
		var out *ts.Tensor
		// SetPrecision checked that autocast works in this build.
		err := native.Autocast(m.VS.Device(), p.dtype(), func() error {
			out = m.Net.Head(s, m.Net.Features(s, x, train), train)
			return nil
		})
		if err != nil {
			panic("model: autocast: " + err.Error())
		}
		if out.DType() != gotch.Float {
			out = s.T(out.MustTotype(gotch.Float, false))
		}
		return s.Keep(out)
	}
	return s.Keep(m.Net.Head(s, m.Net.Features(s, x, train), train))
}

// Close frees the model's parameters and buffers. The model is unusable
// afterwards; Close is safe to call twice.
func (m *Model) Close() {
	for _, nt := range m.named {
		nt.Tensor.MustDrop()
	}
	m.named = nil
	if r, ok := m.Net.(interface{ release() }); ok && m.VS != nil {
		r.release()
	}
	if m.VS != nil {
		m.VS.Destroy()
		m.VS = nil
	}
}

// Named returns every variable (parameters and buffers such as BatchNorm
// running statistics) by name, sorted by name. The tensors are handles of
// their own on the same data (shallow clones), valid while they are
// referenced: gotch's VarStore.Variables returns struct copies whose C
// handle is freed when the VarStore is garbage-collected, which can happen
// in the middle of a loop over them.
func (m *Model) Named() []NamedTensor {
	if m.named == nil {
		vars := m.VS.Variables()
		m.named = make([]NamedTensor, 0, len(vars))
		for name, t := range vars {
			m.named = append(m.named, NamedTensor{Name: name, Tensor: t.MustShallowClone()})
		}
		runtime.KeepAlive(m.VS)
		sort.Slice(m.named, func(i, j int) bool { return m.named[i].Name < m.named[j].Name })
	}
	return append([]NamedTensor(nil), m.named...)
}

// Trainable returns the variables that require gradients, sorted by name.
func (m *Model) Trainable() []NamedTensor {
	var out []NamedTensor
	for _, nt := range m.Named() {
		if nt.Tensor.MustRequiresGrad() {
			out = append(out, nt)
		}
	}
	return out
}

// NamedTensor is a tensor with its state-dict name.
type NamedTensor struct {
	Name   string
	Tensor *ts.Tensor
}

// Tensors returns the tensors of named, in order (the same handles, not
// copies).
func Tensors(named []NamedTensor) []*ts.Tensor {
	out := make([]*ts.Tensor, len(named))
	for i, nt := range named {
		out[i] = nt.Tensor
	}
	return out
}

// Load copies weights into the model's variables. Every variable must be
// given with its exact shape, except those optional says may be missing
// (they keep their values); ignore says which weights of the map to skip
// (for example PyTorch's num_batches_tracked). Missing, unexpected and
// mis-shaped names are all reported in one error.
func (m *Model) Load(weights map[string]*ts.Tensor, ignore, optional func(name string) bool) error {
	var missing, unexpected, mismatched []string
	named := m.Named()
	have := map[string]bool{}
	for _, nt := range named {
		have[nt.Name] = true
		src, ok := weights[nt.Name]
		if !ok {
			if optional == nil || !optional(nt.Name) {
				missing = append(missing, nt.Name)
			}
			continue
		}
		if a, b := nt.Tensor.MustSize(), src.MustSize(); !slices.Equal(a, b) {
			mismatched = append(mismatched, fmt.Sprintf("%s (model %v, file %v)", nt.Name, a, b))
		}
	}
	for name := range weights {
		if !have[name] && (ignore == nil || !ignore(name)) {
			unexpected = append(unexpected, name)
		}
	}
	sort.Strings(unexpected)
	if len(missing)+len(unexpected)+len(mismatched) > 0 {
		msg := "weights do not fit the model:"
		if len(missing) > 0 {
			msg += fmt.Sprintf("\n  missing: %v", missing)
		}
		if len(unexpected) > 0 {
			msg += fmt.Sprintf("\n  unexpected: %v", unexpected)
		}
		if len(mismatched) > 0 {
			msg += fmt.Sprintf("\n  wrong shape: %v", mismatched)
		}
		return errors.New(msg)
	}
	return torch.NoGrad(func() error {
		for _, nt := range named {
			src, ok := weights[nt.Name]
			if !ok {
				continue
			}
			if src.DType() != nt.Tensor.DType() {
				src = src.MustTotype(nt.Tensor.DType(), false)
				defer src.MustDrop()
			}
			nt.Tensor.Copy_(src)
		}
		return nil
	})
}
