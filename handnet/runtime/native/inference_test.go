package native

import (
	"fmt"
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

// MaxPool2d in training (x requires a gradient) gives libtorch's
// max_pool2d output and input gradient bit for bit, in fp32 and bf16: an
// NCHW x through the channels-last kernel, a channels-last one through
// libtorch's own. The inputs are ReLU outputs, windows of equal zeros
// included, with a NaN and an infinity, where the index each kernel keeps
// decides where the gradient goes.
func TestMaxPool2dGradient(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for _, dt := range []gotch.DType{gotch.Float, gotch.BFloat16} {
		for _, c := range []struct {
			shape      []int64
			k, st, pad int64
			cl         bool
		}{
			{[]int64{2, 64, 17, 22}, 3, 2, 1, false}, // ResNet-18's stem pool
			{[]int64{3, 16, 12, 17}, 2, 2, 0, false}, // the CNN's
			{[]int64{1, 5, 9, 7}, 2, 2, 0, false},    // odd sides, 5 channels
			{[]int64{2, 32, 10, 11}, 3, 2, 1, true},  // channels last: libtorch's
		} {
			name := fmt.Sprintf("%v %v k%d cl=%v", dt, c.shape, c.k, c.cl)
			lib.AtManualSeed(7)
			x0 := ts.MustRandn(c.shape, gotch.Float, gotch.CPU).MustRelu(true).MustTotype(dt, true)
			x0.MustNarrow(2, 1, 1, false).MustNarrow(3, 2, 1, true).MustFill_(ts.FloatScalar(math.NaN()))
			x0.MustNarrow(2, 3, 1, false).MustNarrow(3, 0, 1, true).MustFill_(ts.FloatScalar(math.Inf(1)))
			if c.cl {
				if err := SetChannelsLast(x0, true); err != nil {
					t.Fatal(err)
				}
			}
			k, st, pad := [2]int64{c.k, c.k}, [2]int64{c.st, c.st}, [2]int64{c.pad, c.pad}
			var gy *ts.Tensor
			run := func(native bool) (y, gx *ts.Tensor) {
				x := x0.MustDetach(false)
				x.MustRequiresGrad_(true)
				if native {
					var err error
					if y, err = MaxPool2d(x, k, st, pad); err != nil {
						t.Fatal(err)
					}
				} else {
					y = x.MustMaxPool2d(k[:], st[:], pad[:], []int64{1, 1}, false, false)
				}
				if !y.MustRequiresGrad() {
					t.Fatalf("%s: the output is out of autograd", name)
				}
				if gy == nil {
					gy = ts.MustRandn(y.MustSize(), gotch.Float, gotch.CPU).MustTotype(dt, true)
				}
				// Σ y·gy: y's gradient is gy, exactly.
				loss := y.MustTotype(gotch.Float, false).MustMul(gy.MustTotype(gotch.Float, false), true).MustSum(gotch.Float, true)
				if err := loss.Backward(); err != nil {
					t.Fatal(err)
				}
				return y, x.MustGrad(false)
			}
			wy, wgx := run(false)
			gotY, gotGX := run(true)
			if !c.cl && !gotY.MustIsContiguous() {
				t.Errorf("%s: the output of an NCHW input is not NCHW", name)
			}
			for _, p := range []struct {
				what      string
				got, want *ts.Tensor
			}{{"output", gotY, wy}, {"input gradient", gotGX, wgx}} {
				g := p.got.MustTotype(gotch.Float, false).MustContiguous(true).Vals().([]float32)
				w := p.want.MustTotype(gotch.Float, false).MustContiguous(true).Vals().([]float32)
				if len(g) != len(w) {
					t.Fatalf("%s: %s has %d values, libtorch's %d", name, p.what, len(g), len(w))
				}
				for i := range w {
					if math.Float32bits(g[i]) != math.Float32bits(w[i]) && !(g[i] != g[i] && w[i] != w[i]) {
						t.Errorf("%s: %s[%d] = %v, libtorch's %v", name, p.what, i, g[i], w[i])
						break
					}
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

// Conv2d gives libtorch's conv2d values and gradients (input, weight,
// bias), both where it hands the convolution to oneDNN in place of
// libtorch's im2col + BLAS path (batch 1 with a small input and a 3×3 or
// smaller kernel; a 1×1 kernel on one thread) and where it leaves it to
// libtorch.
func TestConv2dEqualsLibtorch(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for _, c := range []struct {
		name            string
		x, w            []int64
		stride, padding int64
		bias, cl        bool
		threads         int // intra-op threads for the case (0: as they are)
	}{
		{"layer4 batch 1 (oneDNN)", []int64{1, 512, 4, 6}, []int64{512, 512, 3, 3}, 1, 1, false, false, 0},
		{"small, bias, channels last, batch 1 (oneDNN)", []int64{1, 16, 10, 12}, []int64{8, 16, 3, 3}, 1, 1, true, true, 0},
		{"1x1 batch 1 (oneDNN on one thread)", []int64{1, 32, 8, 8}, []int64{16, 32, 1, 1}, 1, 0, true, false, 1},
		{"strided, batch 1, large input (libtorch's)", []int64{1, 64, 64, 85}, []int64{64, 64, 3, 3}, 2, 1, false, false, 2},
		{"batch 3 (libtorch's)", []int64{3, 16, 10, 12}, []int64{8, 16, 3, 3}, 1, 1, true, true, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			runtime.LockOSThread() // the thread count is the OS thread's
			defer runtime.UnlockOSThread()
			if c.threads > 0 {
				defer lib.AtSetNumThreads(lib.AtGetNumThreads())
				lib.AtSetNumThreads(c.threads)
			}
			lib.AtManualSeed(int64(len(c.name)))
			x0 := ts.MustRandn(c.x, gotch.Float, gotch.CPU)
			if c.cl {
				if err := SetChannelsLast(x0, true); err != nil {
					t.Fatal(err)
				}
			}
			w0 := ts.MustRandn(c.w, gotch.Float, gotch.CPU)
			var b0 *ts.Tensor
			if c.bias {
				b0 = ts.MustRandn([]int64{c.w[0]}, gotch.Float, gotch.CPU)
			}
			run := func(native bool) (out []*ts.Tensor) {
				x, w := x0.MustDetach(false), w0.MustDetach(false)
				x.MustRequiresGrad_(true)
				w.MustRequiresGrad_(true)
				b := ts.NewTensor() // undefined: no bias, as gotch's Conv2D without one
				if b0 != nil {
					b = b0.MustDetach(false)
					b.MustRequiresGrad_(true)
				}
				st, pd, one := [2]int64{c.stride, c.stride}, [2]int64{c.padding, c.padding}, [2]int64{1, 1}
				var y *ts.Tensor
				if native {
					var err error
					if y, err = Conv2d(x, w, b, st, pd, one, 1); err != nil {
						t.Fatal(err)
					}
				} else {
					y = ts.MustConv2d(x, w, b, st[:], pd[:], one[:], 1)
				}
				// A loss whose gradient differs at every output: Σ y·y/2.
				loss := y.MustMul(y, false).MustSum(gotch.Float, true).MustMulScalar(ts.FloatScalar(0.5), true)
				if err := loss.Backward(); err != nil {
					t.Fatal(err)
				}
				out = append(out, y, x.MustGrad(false), w.MustGrad(false))
				if b0 != nil {
					out = append(out, b.MustGrad(false))
				}
				return out
			}
			want, got := run(false), run(true)
			for i, name := range []string{"output", "input gradient", "weight gradient", "bias gradient"}[:len(want)] {
				if err := close(got[i], want[i], 1e-4); err != nil {
					t.Errorf("%s: %v", name, err)
				}
			}
		})
	}
}

// Linear gives libtorch's linear — output, input, weight and bias
// gradients — within fp32's rounding, for the layers it runs in oneDNN
// (fc1's shape at batch 1 and 3, a batch over outerRows, no bias, an input
// without gradient) and the ones it leaves to libtorch (a small layer,
// autocast); the count of oneDNN calls says which way each went.
func TestLinearEqualsLibtorch(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for _, c := range []struct {
		name           string
		batch, in, out int64
		bias, gradX    bool
		autocast       bool
		oneDNN         bool // the path Linear must take
	}{
		{"fc1 batch 1", 1, 13056, 256, true, true, false, true},
		{"fc1 batch 3", 3, 13056, 256, true, true, false, true},
		{"batch 40, no bias", 40, 2048, 64, false, true, false, true},
		{"input without gradient", 2, 4096, 32, true, false, false, true},
		{"small layer (libtorch's)", 4, 512, 8, true, true, false, false},
		{"under bf16 autocast (libtorch's)", 2, 13056, 256, true, true, true, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			runtime.LockOSThread() // autocast is the OS thread's
			defer runtime.UnlockOSThread()
			lib.AtManualSeed(int64(len(c.name)))
			x0 := ts.MustRandn([]int64{c.batch, c.in}, gotch.Float, gotch.CPU)
			w0 := ts.MustRandn([]int64{c.out, c.in}, gotch.Float, gotch.CPU).MustMulScalar(ts.FloatScalar(0.05), true)
			var b0 *ts.Tensor
			if c.bias {
				b0 = ts.MustRandn([]int64{c.out}, gotch.Float, gotch.CPU)
			}
			run := func(native bool) (out []*ts.Tensor) {
				x, w := x0.MustDetach(false), w0.MustDetach(false)
				x.MustRequiresGrad_(c.gradX)
				w.MustRequiresGrad_(true)
				b := ts.NewTensor()
				if b0 != nil {
					b = b0.MustDetach(false)
					b.MustRequiresGrad_(true)
				}
				var y *ts.Tensor
				forward := func() (err error) {
					if native {
						y, err = Linear(x, w, b)
					} else {
						y, err = ts.Linear(x, w, b)
					}
					return err
				}
				var err error
				if c.autocast {
					err = Autocast(gotch.CPU, gotch.BFloat16, forward)
				} else {
					err = forward()
				}
				if err != nil {
					t.Fatal(err)
				}
				y = y.MustTotype(gotch.Float, true)
				loss := y.MustMul(y, false).MustSum(gotch.Float, true).MustMulScalar(ts.FloatScalar(0.5), true)
				if err := loss.Backward(); err != nil {
					t.Fatal(err)
				}
				out = append(out, y, w.MustGrad(false))
				if c.gradX {
					out = append(out, x.MustGrad(false))
				} else if x.MustGrad(false).MustDefined() {
					t.Error("the input got a gradient it does not require")
				}
				if b0 != nil {
					out = append(out, b.MustGrad(false))
				}
				return out
			}
			want := run(false)
			before := oneDNNLinearCalls()
			got := run(true)
			if took := oneDNNLinearCalls() > before; took != c.oneDNN {
				t.Errorf("ran in oneDNN: %v, want %v", took, c.oneDNN)
			}
			names := []string{"output", "weight gradient"}
			if c.gradX {
				names = append(names, "input gradient")
			}
			if c.bias {
				names = append(names, "bias gradient")
			}
			for i, name := range names {
				if err := close(got[i], want[i], 1e-4); err != nil {
					t.Errorf("%s: %v", name, err)
				}
			}
		})
	}
}

// The bf16 convolutions' one-pass rounding gives the two casts'
// x.to(bf16).to(float32) bit for bit: ties to even both ways, the largest
// values rounding to infinity, infinities, zeros of both signs, denormals,
// NaN (still NaN); on a tensor long enough for both threads, with a tail
// shorter than a vector, on a transposed one, and on a strided one (the
// casts' own path).
func TestRoundBF16(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	special := []float32{0, float32(math.Copysign(0, -1)), 1, -1, 1.00390625, 1.01171875, 1.0039063, -1.0117188,
		math.MaxFloat32, -math.MaxFloat32, 3.3895314e38, float32(math.Inf(1)), float32(math.Inf(-1)),
		1e-40, -1e-40, math.SmallestNonzeroFloat32, 1.1754944e-38, 65504, 3.14159265, -2.7182818}
	lib.AtManualSeed(3)
	random := ts.MustRandn([]int64{100003}, gotch.Float, gotch.CPU).MustMulScalar(ts.FloatScalar(1e3), true)
	f32 := func(x *ts.Tensor) []float32 { return x.MustContiguous(false).Vals().([]float32) }
	values := append(special, f32(random)...) // 100,023 = 3 · 33,341
	x := ts.MustOfSlice(values)
	bits := func(x *ts.Tensor) []uint32 {
		v := f32(x)
		out := make([]uint32, len(v))
		for i, f := range v {
			out[i] = math.Float32bits(f)
		}
		return out
	}
	nan := ts.MustOfSlice([]float32{float32(math.NaN()), -float32(math.NaN())})
	for _, c := range []struct {
		name string
		x    *ts.Tensor
	}{
		{"dense", x},
		{"transposed", x.MustView([]int64{int64(len(values)) / 3, 3}, false).MustT(true)},
		{"strided", x.MustView([]int64{int64(len(values)) / 3, 3}, false).MustNarrow(1, 0, 2, true)},
		{"NaN", nan},
	} {
		got, err := roundBF16(c.x)
		if err != nil {
			t.Fatal(err)
		}
		want := c.x.MustTotype(gotch.BFloat16, false).MustTotype(gotch.Float, true)
		g, w := bits(got), bits(want)
		if len(g) != len(w) {
			t.Fatalf("%s: %d values, want %d", c.name, len(g), len(w))
		}
		for i := range g {
			gf, wf := math.Float32frombits(g[i]), math.Float32frombits(w[i])
			if g[i] != w[i] && !(gf != gf && wf != wf) {
				t.Errorf("%s: value %d: %08x (%g) rounds to %08x (%g), the casts to %08x (%g)", c.name, i,
					math.Float32bits(f32(c.x)[i]), f32(c.x)[i], g[i], gf, w[i], wf)
				break
			}
			if gf != gf && g[i]&0xffff != 0 {
				t.Errorf("%s: NaN %08x is not a bf16 number", c.name, g[i])
			}
		}
	}
}

// close checks |a−b| ≤ tol·max(1, max|b|) elementwise and equal shapes.
func close(a, b *ts.Tensor, tol float64) error {
	if fmt.Sprint(a.MustSize()) != fmt.Sprint(b.MustSize()) {
		return fmt.Errorf("shape %v, want %v", a.MustSize(), b.MustSize())
	}
	diff := a.MustSub(b, false).MustAbs(true).MustMax(true).Float64Values()[0]
	scale := math.Max(1, b.MustAbs(false).MustMax(true).Float64Values()[0])
	if !(diff <= tol*scale) {
		return fmt.Errorf("max difference %.3g, want ≤ %.3g (largest value %.3g)", diff, tol*scale, scale)
	}
	return nil
}

// FlushDenormal flushes denormal floats to zero on the calling thread and
// on its intra-op threads (an op over a million elements runs on both
// threads here), and off again.
func TestFlushDenormal(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer lib.AtSetNumThreads(lib.AtGetNumThreads())
	lib.AtSetNumThreads(2)
	const n = 1 << 20
	x := ts.MustFull([]int64{n}, ts.FloatScalar(1e-39), gotch.Float, gotch.CPU) // below fp32's normal range (1.18e-38)
	defer x.MustDrop()
	nonzero := func() int64 {
		y := x.MustMulScalar(ts.FloatScalar(3), false)
		defer y.MustDrop()
		c := y.MustCountNonzero([]int64{0}, true)
		defer c.MustDrop()
		return c.Int64Values()[0]
	}
	if got := nonzero(); got != n {
		t.Fatalf("before: %d of %d products nonzero, want all (denormals already flushed?)", got, n)
	}
	if !FlushDenormal(true) {
		t.Skip("this CPU has no flush-to-zero modes")
	}
	got := nonzero()
	FlushDenormal(false)
	if got != 0 {
		t.Errorf("flushed: %d of %d products of a denormal nonzero, want 0 (a thread of the team kept its mode?)", got, n)
	}
	if got := nonzero(); got != n {
		t.Errorf("after FlushDenormal(false): %d of %d nonzero, want all", got, n)
	}
}

// Under CPU autocast to bf16, Conv2d runs oneDNN's bf16 kernel (PyTorch's
// way, BF16ConvKernels: libtorch's conv2d under autocast, bit for bit) or
// fp32 kernels on the bf16-rounded operands (BF16ConvFP32Kernels: bit for
// bit the fp32 convolution of x, w and b rounded to bf16, its output
// rounded to bf16; the weight's gradient rounded to bf16 as autocast's
// cast rounds it). The two agree to bf16's rounding, forward and backward;
// BF16ConvAuto runs the way the CPU says, exactly.
func TestBF16Conv(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer SetBF16Conv(BF16ConvMode())
	for _, c := range []struct {
		name string
		x, w []int64
	}{
		{"batch 2, channels last", []int64{2, 16, 12, 14}, []int64{32, 16, 3, 3}},
		// One that libtorch would give the BLAS in fp32 (layer4-like at
		// batch 1): the fp32 kernels' way must take oneDNN, as Conv2d does
		// outside autocast, or the bits differ (and the BLAS is 10x slower).
		{"batch 1, layer4-like", []int64{1, 64, 4, 6}, []int64{64, 64, 3, 3}},
	} {
		t.Run(c.name, func(t *testing.T) {
			runtime.LockOSThread() // a subtest runs on a goroutine of its own
			defer runtime.UnlockOSThread()
			testBF16Conv(t, c.x, c.w)
		})
	}
}

func testBF16Conv(t *testing.T, xs, ws []int64) {
	lib.AtManualSeed(7)
	x := ts.MustRandn(xs, gotch.Float, gotch.CPU)
	if err := SetChannelsLast(x, true); err != nil {
		t.Fatal(err)
	}
	w := ts.MustRandn(ws, gotch.Float, gotch.CPU)
	b := ts.MustRandn(ws[:1], gotch.Float, gotch.CPU)
	type result struct{ y, gw, gx []float64 }
	run := func(x *ts.Tensor) result {
		xl, wl, bl := x.MustDetach(false), w.MustDetach(false), b.MustDetach(false)
		for _, l := range []*ts.Tensor{xl, wl, bl} {
			l.MustRequiresGrad_(true)
		}
		var y *ts.Tensor
		err := Autocast(gotch.CPU, gotch.BFloat16, func() (err error) {
			y, err = Conv2d(xl, wl, bl, [2]int64{1, 1}, [2]int64{1, 1}, [2]int64{1, 1}, 1)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if y.DType() != gotch.BFloat16 {
			t.Fatalf("mode %d: output %v, want bf16", BF16ConvMode(), y.DType())
		}
		y.MustTotype(gotch.Float, false).MustSum(gotch.Float, true).MustBackward()
		r := result{y.MustTotype(gotch.Float, false).Float64Values(), wl.MustGrad(false).Float64Values(), xl.MustGrad(false).Float64Values()}
		for _, t := range []*ts.Tensor{xl, wl, bl, y} {
			t.MustDrop()
		}
		return r
	}
	SetBF16Conv(BF16ConvKernels)
	bf := run(x)
	SetBF16Conv(BF16ConvFP32Kernels)
	calls := oneDNNConvCalls()
	up := run(x)
	// Where libtorch would give the fp32 convolution to the BLAS, the fp32
	// kernels' way goes to oneDNN as Conv2d does outside autocast.
	if blas := xs[0] == 1 && xs[1]*xs[2]*xs[3] <= 20480; blas != (oneDNNConvCalls() > calls) {
		t.Errorf("fp32 kernels: oneDNN in place of the BLAS %d times, want it %v", oneDNNConvCalls()-calls, blas)
	}

	// PyTorch's way: libtorch's conv2d under autocast.
	var lt *ts.Tensor
	if err := Autocast(gotch.CPU, gotch.BFloat16, func() error {
		lt = ts.MustConv2d(x, w, b, []int64{1, 1}, []int64{1, 1}, []int64{1, 1}, 1)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// fp32 kernels on the rounded operands, outside autocast.
	round := func(t *ts.Tensor) *ts.Tensor {
		return t.MustTotype(gotch.BFloat16, false).MustTotype(gotch.Float, true)
	}
	xr, wr, br := round(x), round(w), round(b)
	f32, err := Conv2d(xr, wr, br, [2]int64{1, 1}, [2]int64{1, 1}, [2]int64{1, 1}, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name      string
		got, want []float64
	}{
		{"bf16 kernels = libtorch under autocast", bf.y, lt.MustTotype(gotch.Float, false).Float64Values()},
		{"fp32 kernels = fp32 conv of the rounded operands, rounded", up.y, round(f32).Float64Values()},
	} {
		for i := range c.want {
			if c.got[i] != c.want[i] {
				t.Fatalf("%s: element %d = %v, want %v", c.name, i, c.got[i], c.want[i])
			}
		}
	}
	for i, g := range up.gw {
		if float64(float32(g)) != g || bf16Round(g) != g {
			t.Fatalf("fp32 kernels: weight gradient %d = %v is not a bf16 number (autocast's cast rounds it)", i, g)
		}
	}
	for _, c := range []struct {
		name   string
		bf, up []float64
	}{{"output", bf.y, up.y}, {"weight gradient", bf.gw, up.gw}, {"input gradient", bf.gx, up.gx}} {
		scale, diff := 0.0, 0.0
		for i := range c.bf {
			scale = math.Max(scale, math.Abs(c.bf[i]))
			diff = math.Max(diff, math.Abs(c.bf[i]-c.up[i]))
		}
		// Sums in another order, rounded to bf16 (8 bits): within a few of
		// its steps at the largest value.
		if diff > scale/32 {
			t.Errorf("%s: the two kernels differ by %g (largest value %g)", c.name, diff, scale)
		}
		t.Logf("%s: the two kernels differ by %.3g (largest value %.3g)", c.name, diff, scale)
	}

	// Auto: the CPU decides; fp32 kernels without AMX-BF16.
	SetBF16Conv(BF16ConvAuto)
	a := run(x)
	want := bf.y
	if BF16ConvFP32() {
		want = up.y
	}
	for i := range want {
		if a.y[i] != want[i] {
			t.Fatalf("auto (fp32 kernels: %v): element %d = %v, want %v", BF16ConvFP32(), i, a.y[i], want[i])
		}
	}
	t.Logf("auto: fp32 kernels %v", BF16ConvFP32())
	for _, t := range []*ts.Tensor{x, w, b, lt, xr, wr, br, f32} {
		t.MustDrop()
	}
}

// bf16Round rounds v to the nearest bf16 number (ties to even).
func bf16Round(v float64) float64 {
	bits := math.Float32bits(float32(v))
	bits += 0x7fff + (bits>>16)&1
	return float64(math.Float32frombits(bits &^ 0xffff))
}
