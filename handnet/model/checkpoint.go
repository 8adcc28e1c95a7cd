package model

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	"github.com/handnet/handnet/handnet/runtime/fileio"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/nlpodyssey/safetensors"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// Checkpoints are safetensors files: a JSON header, then raw little-endian
// tensors. Any safetensors reader (Python's safetensors, Hugging Face
// tools) opens them; unlike a pickle, loading one runs no code. handnet's
// own information sits in the header's string metadata:
//
//	format          "handnet"
//	format_version  "1"
//	model           JSON Config: architecture, classes, input size, normalisation
//	train_config    JSON training configuration (when trained by handnet)
//	metrics         JSON final metrics (when known)
//	train_state     JSON resume state (only in a run's last checkpoint)
const (
	CheckpointFormat  = "handnet"
	CheckpointVersion = 1
)

// Checkpoint is a checkpoint file's content.
type Checkpoint struct {
	Model    Config
	Metadata map[string]string     // all header metadata, the keys above included
	Tensors  map[string]*ts.Tensor // on the CPU; drop them when done
}

// SaveCheckpoint writes m's variables, extra tensors (e.g. optimizer
// state) and metadata to path atomically (fileio.WriteAtomic).
func SaveCheckpoint(path string, m *Model, extra []NamedTensor, meta map[string]string) error {
	cfg, err := json.Marshal(m.Config)
	if err != nil {
		return err
	}
	md := map[string]string{"format": CheckpointFormat, "format_version": strconv.Itoa(CheckpointVersion), "model": string(cfg)}
	for k, v := range meta {
		md[k] = v
	}
	views := map[string]safetensors.TensorView{}
	for _, nt := range append(m.Named(), extra...) {
		v, err := view(nt.Tensor)
		if err != nil {
			return fmt.Errorf("checkpoint tensor %s: %w", nt.Name, err)
		}
		views[nt.Name] = v
	}
	var buf bytes.Buffer
	if err := safetensors.SerializeToWriter(views, md, &buf); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return fileio.WriteAtomic(path, buf.Bytes())
}

var toSafe = map[gotch.DType]safetensors.DType{
	gotch.Float: safetensors.F32, gotch.Double: safetensors.F64, gotch.Int64: safetensors.I64,
	gotch.Int: safetensors.I32, gotch.Uint8: safetensors.U8, gotch.Int8: safetensors.I8,
	gotch.Half: safetensors.F16, gotch.BFloat16: safetensors.BF16, gotch.Bool: safetensors.BOOL,
}

func view(t *ts.Tensor) (safetensors.TensorView, error) {
	dt, ok := toSafe[t.DType()]
	if !ok {
		return safetensors.TensorView{}, fmt.Errorf("dtype %v not storable", t.DType())
	}
	b, err := torch.Bytes(t)
	if err != nil {
		return safetensors.TensorView{}, err
	}
	shape := []uint64{}
	for _, d := range t.MustSize() {
		shape = append(shape, uint64(d))
	}
	return safetensors.NewTensorView(dt, shape, b)
}

// MaxCheckpointBytes is the largest safetensors file ReadSafetensors reads.
const MaxCheckpointBytes = 4 << 30

// ReadRegular reads a regular file of at most max bytes (a FIFO or device
// is refused without blocking); what names the kind of file in the error
// about its size ("a checkpoint").
func ReadRegular(path string, max int64, what string) ([]byte, error) {
	f, st, err := fileio.OpenRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st.Size() > max {
		return nil, fmt.Errorf("%s: %d bytes, more than the %d %s may have", path, st.Size(), max, what)
	}
	b := make([]byte, st.Size())
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}

// ReadSafetensors reads every tensor and the metadata of any safetensors
// file. Tensors are on the CPU. Everything is checked before a tensor is
// built — the header's size, every dtype, shape and data range — so a
// hostile file is a one-line error, never a crash.
func ReadSafetensors(path string) (map[string]*ts.Tensor, map[string]string, error) {
	b, err := ReadRegular(path, MaxCheckpointBytes, "a checkpoint")
	if err != nil {
		return nil, nil, err
	}
	// A safetensors file starts with its header's length and then "{"; a
	// small header's length can look like a pickle's first bytes (0x80 0x02).
	isSafe := len(b) >= 9 && b[8] == '{' && binary.LittleEndian.Uint64(b) <= uint64(len(b)-8)
	switch {
	case !isSafe && (len(b) >= 4 && string(b[:4]) == "PK\x03\x04" || len(b) >= 3 && b[0] == 0x80 && b[1] >= 2 && b[1] <= 5 && b[2] != 0):
		return nil, nil, fmt.Errorf("%s is a PyTorch file (torch.save), not a handnet checkpoint (safetensors); to start ResNet-18 from it use --weights", path)
	case len(b) < 8:
		return nil, nil, fmt.Errorf("%s: %d bytes, too short for a safetensors file", path, len(b))
	}
	if n := binary.LittleEndian.Uint64(b); n > uint64(len(b)-8) || n > 100<<20 {
		return nil, nil, fmt.Errorf("%s: not a safetensors file (its header would be %d bytes, the file has %d)", path, n, len(b))
	}
	st, err := safetensors.Deserialize(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: not a safetensors file, or truncated: %v", path, err)
	}
	_, md, err := safetensors.ReadMetadata(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: bad metadata: %v", path, err)
	}
	fromSafe := map[safetensors.DType]gotch.DType{}
	for g, s := range toSafe {
		fromSafe[s] = g
	}
	views := st.Tensors()
	for _, nv := range views {
		dt, ok := fromSafe[nv.TensorView.DType()]
		if !ok {
			return nil, nil, fmt.Errorf("%s: tensor %s has unsupported dtype %v", path, nv.Name, nv.TensorView.DType())
		}
		n := uint64(dt.Size())
		for _, d := range nv.TensorView.Shape() {
			if d > 1<<40 || n > 0 && d > (1<<62)/n {
				return nil, nil, fmt.Errorf("%s: tensor %s has an impossible shape %v", path, nv.Name, nv.TensorView.Shape())
			}
			n *= d
		}
		if n != uint64(len(nv.TensorView.Data())) {
			return nil, nil, fmt.Errorf("%s: tensor %s: shape %v of %v needs %d bytes, the file gives %d", path, nv.Name, nv.TensorView.Shape(), dt, n, len(nv.TensorView.Data()))
		}
	}
	tensors := map[string]*ts.Tensor{}
	for _, nv := range views {
		shape := []int64{}
		for _, d := range nv.TensorView.Shape() {
			shape = append(shape, int64(d))
		}
		t, err := torch.FromBytes(nv.TensorView.Data(), shape, fromSafe[nv.TensorView.DType()])
		if err != nil {
			for _, t := range tensors {
				t.MustDrop()
			}
			return nil, nil, fmt.Errorf("%s: tensor %s: %w", path, nv.Name, err)
		}
		tensors[nv.Name] = t
	}
	return tensors, md.Metadata(), nil
}

// ReadCheckpoint reads a handnet checkpoint. A truncated file, a foreign
// safetensors file, a newer format version or a model description that
// does not validate is a clear error.
func ReadCheckpoint(path string) (*Checkpoint, error) {
	tensors, md, err := ReadSafetensors(path)
	if err != nil {
		return nil, err
	}
	drop := func() {
		for _, t := range tensors {
			t.MustDrop()
		}
	}
	if md["format"] != CheckpointFormat {
		drop()
		return nil, fmt.Errorf("%s: a safetensors file but not a handnet checkpoint (no format=handnet in its metadata)", path)
	}
	if v, err := strconv.Atoi(md["format_version"]); err != nil || v > CheckpointVersion || v < 1 {
		drop()
		return nil, fmt.Errorf("%s: checkpoint format version %q; this handnet reads 1 to %d", path, md["format_version"], CheckpointVersion)
	}
	if err := CheckFinite(tensors); err != nil {
		drop()
		return nil, fmt.Errorf("%s: %w (the run that wrote it diverged, or the file was altered; use an earlier checkpoint)", path, err)
	}
	c := &Checkpoint{Metadata: md, Tensors: tensors}
	if err := json.Unmarshal([]byte(md["model"]), &c.Model); err != nil {
		drop()
		return nil, fmt.Errorf("%s: bad model description: %w", path, err)
	}
	if err := c.Model.Validate(); err != nil {
		drop()
		return nil, fmt.Errorf("%s: bad model description: %w", path, err)
	}
	return c, nil
}

// Drop frees the checkpoint's tensors.
func (c *Checkpoint) Drop() {
	for _, t := range c.Tensors {
		t.MustDrop()
	}
	c.Tensors = nil
}

// Names returns the checkpoint's tensor names, sorted.
func (c *Checkpoint) Names() []string {
	n := make([]string, 0, len(c.Tensors))
	for k := range c.Tensors {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// OptimizerPrefix starts the names of optimizer-state tensors stored in a
// checkpoint beside the weights (e.g. "optim.momentum.fc1.weight").
const OptimizerPrefix = "optim."

// IsOptimizerState tells whether a checkpoint tensor is optimizer state
// rather than a model weight.
func IsOptimizerState(name string) bool { return strings.HasPrefix(name, OptimizerPrefix) }

// LoadModel rebuilds the checkpoint's model on device with its weights.
// Tensors whose names start with "optim." (optimizer state) are ignored.
func LoadModel(c *Checkpoint, device gotch.Device) (*Model, error) {
	m, err := New(c.Model, device)
	if err != nil {
		return nil, err
	}
	if err := m.Load(c.Tensors, IsOptimizerState, nil); err != nil {
		return nil, err
	}
	return m, nil
}
