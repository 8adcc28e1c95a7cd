package torch

import (
	"fmt"
	"unsafe"

	"github.com/sugarme/gotch"
	lib "github.com/sugarme/gotch/libtch"
	"github.com/sugarme/gotch/ts"
)

// FromBytes copies host bytes into a new CPU tensor of the given shape and
// dtype (one copy, unlike gotch's OfDataSize which makes two).
func FromBytes(buf []byte, shape []int64, dtype gotch.DType) (*ts.Tensor, error) {
	n := int64(dtype.Size())
	for _, d := range shape {
		if d < 0 || d > 1<<40 || n > 0 && d > (1<<62)/n {
			return nil, fmt.Errorf("shape %v: dimension %d out of range", shape, d)
		}
		n *= d
	}
	if n != int64(len(buf)) {
		return nil, fmt.Errorf("%d bytes for shape %v of %v (want %d)", len(buf), shape, dtype, n)
	}
	if len(shape) == 0 { // a scalar: gotch's AtTensorOfData wants a dimension
		t, err := FromBytes(buf, []int64{1}, dtype)
		if err != nil {
			return nil, err
		}
		return t.Squeeze(true)
	}
	var p unsafe.Pointer
	if len(buf) > 0 {
		p = unsafe.Pointer(&buf[0])
	} else {
		buf = make([]byte, 1)
		p = unsafe.Pointer(&buf[0])
	}
	c := lib.AtTensorOfData(p, shape, uint(len(shape)), dtype.Size(), int(dtype.CKind()))
	if err := ts.TorchErr(); err != nil {
		return nil, CleanError(err)
	}
	return ts.New(c), nil
}

// Bytes returns a copy of a tensor's data, in row-major order, from any
// device.
func Bytes(t *ts.Tensor) ([]byte, error) {
	c, err := t.To(gotch.CPU, false)
	if err != nil {
		return nil, err
	}
	defer c.MustDrop()
	cc, err := c.Contiguous(false)
	if err != nil {
		return nil, err
	}
	defer cc.MustDrop()
	n := int(cc.Numel()) * int(cc.DType().Size())
	out := make([]byte, n)
	if n == 0 {
		return out, nil
	}
	ptr, err := cc.DataPtr()
	if err != nil {
		return nil, err
	}
	copy(out, unsafe.Slice((*byte)(ptr), n))
	return out, nil
}
