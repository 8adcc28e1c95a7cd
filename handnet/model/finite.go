package model

import (
	"encoding/binary"
	"fmt"
	"math"
	"sort"

	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// NonFiniteError is a tensor holding NaN or ±Inf: weights that cannot give
// a meaningful answer, refused at load and after each training epoch.
type NonFiniteError struct {
	Tensor string  // the first such tensor, in name order
	Index  int     // the first bad element, row-major
	Value  float64 // NaN, +Inf or -Inf
}

func (e *NonFiniteError) Error() string {
	return fmt.Sprintf("tensor %s holds %v at element %d: non-finite weights are refused", e.Tensor, e.Value, e.Index)
}

// FirstNonFinite returns the index and value of the first NaN or ±Inf
// among little-endian values of dtype dt in b, or -1: integer dtypes are
// always finite.
func FirstNonFinite(b []byte, dt gotch.DType) (int, float64) {
	switch dt {
	case gotch.Float:
		for i := 0; i+4 <= len(b); i += 4 {
			if u := binary.LittleEndian.Uint32(b[i:]); u&0x7f800000 == 0x7f800000 {
				return i / 4, float64(math.Float32frombits(u))
			}
		}
	case gotch.Double:
		for i := 0; i+8 <= len(b); i += 8 {
			if u := binary.LittleEndian.Uint64(b[i:]); u&0x7ff0000000000000 == 0x7ff0000000000000 {
				return i / 8, math.Float64frombits(u)
			}
		}
	case gotch.BFloat16: // the top half of a float32
		for i := 0; i+2 <= len(b); i += 2 {
			if u := binary.LittleEndian.Uint16(b[i:]); u&0x7f80 == 0x7f80 {
				return i / 2, float64(math.Float32frombits(uint32(u) << 16))
			}
		}
	case gotch.Half:
		for i := 0; i+2 <= len(b); i += 2 {
			if u := binary.LittleEndian.Uint16(b[i:]); u&0x7c00 == 0x7c00 {
				v := math.Inf(1)
				if u&0x3ff != 0 {
					v = math.NaN()
				} else if u&0x8000 != 0 {
					v = math.Inf(-1)
				}
				return i / 2, v
			}
		}
	}
	return -1, 0
}

// CheckFinite reports the first tensor, in name order, holding NaN or
// ±Inf (a *NonFiniteError), or nil. Tensors may be on any device.
func CheckFinite(tensors map[string]*ts.Tensor) error {
	names := make([]string, 0, len(tensors))
	for n := range tensors {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		t := tensors[n]
		switch t.DType() {
		case gotch.Float, gotch.Double, gotch.Half, gotch.BFloat16:
		default:
			continue
		}
		b, err := torch.Bytes(t)
		if err != nil {
			return fmt.Errorf("tensor %s: %w", n, err)
		}
		if i, v := FirstNonFinite(b, t.DType()); i >= 0 {
			return &NonFiniteError{Tensor: n, Index: i, Value: v}
		}
	}
	return nil
}

// CheckFiniteNamed is CheckFinite for a model's named tensors.
func CheckFiniteNamed(named []NamedTensor) error {
	m := make(map[string]*ts.Tensor, len(named))
	for _, nt := range named {
		m[nt.Name] = nt.Tensor
	}
	return CheckFinite(m)
}
