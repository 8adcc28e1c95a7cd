package vision

import (
	"errors"
	"fmt"

	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// DeviceImages is a cache's images uploaded once to a device, as one
// uint8 tensor [Count,3,H,W] (a quarter of the float32 bytes): a loader
// given it (LoaderOptions.OnDevice) gathers every batch by index there,
// flips and normalises it there, and copies nothing from host memory but
// the indices. Build it on the torch thread that uses the loaders; several
// loaders (a split's train, validation and test) share one.
type DeviceImages struct {
	cache  *Cache
	device gotch.Device
	x      *ts.Tensor // [Count,3,H,W] uint8
	lut    *ts.Tensor // [768] float32: channel c, value v → (v/255 − mean)/std
	offset *ts.Tensor // [1,3,1,1] int64: 0, 256, 512
}

// uploadChunk is how many images go to the device per copy, so that the
// host never holds a second copy of the whole cache.
const uploadChunk = 512

// UploadCache copies c's images to device (see DeviceImages). It needs
// Bytes(c) of device memory.
func UploadCache(c *Cache, device gotch.Device) (*DeviceImages, error) {
	if c == nil || c.Count == 0 {
		return nil, errors.New("upload: empty cache")
	}
	size := c.ImageSize()
	s := torch.NewScope()
	defer s.Close()
	x, err := ts.Empty([]int64{int64(c.Count), 3, int64(c.H), int64(c.W)}, gotch.Uint8, device)
	if err != nil {
		return nil, fmt.Errorf("upload %d images (%.0f MB) to %v: %w", c.Count, float64(DeviceBytes(c))/1e6, device, err)
	}
	s.T(x)
	for lo := 0; lo < c.Count; lo += uploadChunk {
		n := min(uploadChunk, c.Count-lo)
		h, err := torch.FromBytes(c.data[lo*size:(lo+n)*size], []int64{int64(n), 3, int64(c.H), int64(c.W)}, gotch.Uint8)
		if err != nil {
			return nil, err
		}
		s.T(h)
		dst := s.T(x.MustNarrow(0, int64(lo), int64(n), false))
		dst.Copy_(h)
		if err := ts.TorchErr(); err != nil {
			return nil, fmt.Errorf("upload to %v: %w", device, err)
		}
		s.Free(h)
	}
	lut, off := normTable(device)
	return &DeviceImages{cache: c, device: device, x: s.Keep(x), lut: lut, offset: off}, nil
}

// normTable returns the normalisation table on device: lut [768] float32
// (channel c, value v at 256c+v: the CPU loader's (v/255 − mean)/std) and
// the channel offsets [1,3,1,1] int64.
func normTable(device gotch.Device) (lut, offset *ts.Tensor) {
	n := NewNormalizer(Mean, Std)
	flat := make([]float32, 0, 3*256)
	for c := range 3 {
		flat = append(flat, n.lut[c][:]...)
	}
	lut = ts.MustOfSlice(flat)
	offset = ts.MustOfSlice([]int64{0, 256, 512}).MustView([]int64{1, 3, 1, 1}, true)
	if device.IsCuda() {
		lut, offset = lut.MustTo(device, true), offset.MustTo(device, true)
	}
	return lut, offset
}

// normalizeWith maps uint8 images u8 to float32 through the table.
func normalizeWith(s *torch.Scope, lut, offset, u8 *ts.Tensor) *ts.Tensor {
	idx := s.T(u8.MustTotype(gotch.Int64, false))
	idx.MustAdd_(offset)
	return lut.MustTake(idx, false)
}

// DeviceBytes is the device memory UploadCache needs for c.
func DeviceBytes(c *Cache) int64 { return int64(c.Count) * int64(c.ImageSize()) }

// Device returns where the images are.
func (d *DeviceImages) Device() gotch.Device { return d.device }

// Close frees the device copy; loaders using it must not be used after.
func (d *DeviceImages) Close() {
	for _, t := range []*ts.Tensor{d.x, d.lut, d.offset} {
		if t != nil {
			t.MustDrop()
		}
	}
	d.x, d.lut, d.offset = nil, nil, nil
}

// batch gathers records idx, mirrors the rows flip marks, and normalises.
func (d *DeviceImages) batch(idx []int64, flip []bool) (*ts.Tensor, error) {
	if d.x == nil {
		return nil, errors.New("device images closed")
	}
	s := torch.NewScope()
	defer s.Close()
	it := s.T(ts.MustOfSlice(idx))
	if d.device.IsCuda() {
		it = s.T(it.MustTo(d.device, false))
	}
	u8 := s.T(d.x.MustIndexSelect(0, it, false))
	anyFlip := false
	mask := make([]bool, len(flip))
	for i, f := range flip {
		mask[i], anyFlip = f, anyFlip || f
	}
	if anyFlip {
		m := s.T(ts.MustOfSlice(mask).MustView([]int64{int64(len(mask)), 1, 1, 1}, true))
		if d.device.IsCuda() {
			m = s.T(m.MustTo(d.device, false))
		}
		flipped := s.T(u8.MustFlip([]int64{3}, false))
		u8 = s.T(flipped.MustWhereSelf(m, u8, false))
	}
	out := normalizeWith(s, d.lut, d.offset, u8) // the CPU loader's table: the same bits
	if err := ts.TorchErr(); err != nil {
		return nil, err
	}
	return out, nil
}
