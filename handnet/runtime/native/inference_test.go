package native

import (
	"math"
	"runtime"
	"testing"

	"github.com/sugarme/gotch"
	lib "github.com/sugarme/gotch/libtch"
	"github.com/sugarme/gotch/ts"
)

// MaxPool2d gives libtorch's max_pool2d bit for bit (NaN included), in
// fp32 and bf16, for the kernels the inference form uses (2×2 stride 2,
// 3×3 stride 2 padding 1) on odd and even sides, on one thread and two;
// inputs it does not handle itself (NCHW, channels not a multiple of 16)
// go to libtorch's.
func TestMaxPool2d(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for _, threads := range []int{1, 2} {
		lib.AtSetNumThreads(threads)
		for _, dt := range []gotch.DType{gotch.Float, gotch.BFloat16} {
			for _, c := range []struct {
				shape       []int64
				k, st, pad  int64
				channelsLst bool
			}{
				{[]int64{3, 16, 9, 11}, 2, 2, 0, true},
				{[]int64{2, 64, 16, 22}, 3, 2, 1, true},
				{[]int64{1, 32, 7, 5}, 3, 2, 1, true},
				{[]int64{2, 8, 6, 6}, 2, 2, 0, true},   // channels not a multiple of 16
				{[]int64{2, 16, 6, 7}, 2, 2, 0, false}, // NCHW
			} {
				x := ts.MustRandn(c.shape, gotch.Float, gotch.CPU).MustTotype(dt, true)
				// a NaN and an infinity somewhere
				x.MustNarrow(2, 1, 1, false).MustNarrow(3, 2, 1, true).MustFill_(ts.FloatScalar(math.NaN()))
				x.MustNarrow(2, 3, 1, false).MustNarrow(3, 0, 1, true).MustFill_(ts.FloatScalar(math.Inf(1)))
				in := x
				if c.channelsLst {
					cl, err := ChannelsLast(x)
					if err != nil {
						t.Fatal(err)
					}
					in = cl
				}
				k, st, pad := [2]int64{c.k, c.k}, [2]int64{c.st, c.st}, [2]int64{c.pad, c.pad}
				got, err := MaxPool2d(in, k, st, pad)
				if err != nil {
					t.Fatal(err)
				}
				want := x.MustMaxPool2d(k[:], st[:], pad[:], []int64{1, 1}, false, false)
				if !slices4(got.MustSize(), want.MustSize()) || got.DType() != dt {
					t.Fatalf("%v: shape %v %v, want %v %v", c, got.MustSize(), got.DType(), want.MustSize(), dt)
				}
				if c.channelsLst && IsChannelsLast(in) && !IsChannelsLast(got) {
					t.Errorf("%v: the output is not channels last", c)
				}
				g, w := got.MustTotype(gotch.Float, false).Float64Values(), want.MustTotype(gotch.Float, false).Float64Values()
				for i := range w {
					if !(g[i] == w[i] || math.IsNaN(g[i]) && math.IsNaN(w[i])) {
						t.Fatalf("threads %d %v %v: element %d = %v, libtorch's %v", threads, dt, c, i, g[i], w[i])
					}
				}
				for _, t := range []*ts.Tensor{x, got, want} {
					t.MustDrop()
				}
				if in != x {
					in.MustDrop()
				}
			}
		}
	}
}

func slices4(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
