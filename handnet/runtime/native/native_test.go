package native

import (
	"errors"
	"math"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sugarme/gotch"
	lib "github.com/sugarme/gotch/libtch"
	"github.com/sugarme/gotch/ts"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func TestFeatures(t *testing.T) {
	f := BuildFeatures()
	if !f.Store || f.Torch == "" {
		t.Fatalf("features %+v: want a store and a torch version", f)
	}
	if !f.Gloo && f.Missing["gloo"] == "" {
		t.Errorf("gloo is missing without a reason: %+v", f)
	}
	if s := f.String(); !strings.Contains(s, "store") {
		t.Errorf("String() = %q", s)
	}
}

func TestStore(t *testing.T) {
	port := freePort(t)
	srv, err := NewStore("127.0.0.1", port, true, 2, 5*time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli, err := NewStore("127.0.0.1", port, false, 2, 5*time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if err := srv.Set("k", []byte("hello\x00world")); err != nil {
		t.Fatal(err)
	}
	got, err := cli.Get("k")
	if err != nil || string(got) != "hello\x00world" {
		t.Fatalf("Get = %q, %v", got, err)
	}
	for i, want := range []int64{3, 7} {
		n, err := []*Store{srv, cli}[i].Add("n", []int64{3, 4}[i])
		if err != nil || n != want {
			t.Fatalf("Add = %d, %v; want %d", n, err, want)
		}
	}
	if ok, err := cli.Check("absent"); err != nil || ok {
		t.Fatalf("Check(absent) = %v, %v", ok, err)
	}
	if ok, err := cli.Check("k"); err != nil || !ok {
		t.Fatalf("Check(k) = %v, %v", ok, err)
	}
	short, err := NewStore("127.0.0.1", port, false, 2, 1500*time.Millisecond, "")
	if err != nil {
		t.Fatal(err)
	}
	defer short.Close()
	start := time.Now()
	if _, err := short.Get("never"); err == nil {
		t.Fatal("Get of a key nobody sets succeeded")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Get waited %v past its 1.5s timeout", d)
	}
	pre, err := NewStore("127.0.0.1", port, false, 2, 5*time.Second, "run/3")
	if err != nil {
		t.Fatal(err)
	}
	defer pre.Close()
	if err := pre.Set("k", []byte("prefixed")); err != nil {
		t.Fatal(err)
	}
	if got, err := cli.Get("run/3/k"); err != nil || string(got) != "prefixed" {
		t.Errorf("a prefixed key reads %q, %v from outside", got, err)
	}
	if got, err := cli.Get("k"); err != nil || string(got) != "hello\x00world" {
		t.Errorf("the prefix leaked: k = %q, %v", got, err)
	}
	srv.Close()
	srv.Close() // twice is fine
	if err := srv.Set("k", nil); err == nil {
		t.Error("Set on a closed store succeeded")
	}
}

func TestStoreConnectFails(t *testing.T) {
	port := freePort(t) // nobody listens there
	start := time.Now()
	_, err := NewStore("127.0.0.1", port, false, 2, 500*time.Millisecond, "")
	if err == nil {
		t.Fatal("connected to a port nobody serves")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("gave up after %v, timeout 500ms", d)
	}
	if strings.Contains(err.Error(), "frame #") {
		t.Errorf("error carries a C++ backtrace: %v", err)
	}
}

func TestGroupOfOne(t *testing.T) {
	if !BuildFeatures().Gloo {
		t.Skip("built without gloo: " + BuildFeatures().Missing["gloo"])
	}
	port := freePort(t)
	s, err := NewStore("127.0.0.1", port, true, 1, 5*time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	g, err := NewGroup("gloo", s, 0, 1, -1, 5*time.Second, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	a := ts.MustOfSlice([]float32{1, 2, 3, 4}).MustView([]int64{2, 2}, true)
	b := ts.MustOfSlice([]float64{5})
	c := ts.MustOfSlice([]float32{6, 7})
	if err := g.AllReduceMean([]*ts.Tensor{a, b, c}, 8); err != nil {
		t.Fatal(err)
	}
	if v := a.Float64Values(); v[0] != 1 || v[3] != 4 {
		t.Errorf("a = %v", v)
	}
	if v := c.Float64Values(); v[1] != 7 {
		t.Errorf("c = %v", v)
	}
	vals := []float64{1.5, -2}
	if err := g.AllReduceSum(vals); err != nil || vals[0] != 1.5 || vals[1] != -2 {
		t.Errorf("AllReduceSum = %v, %v", vals, err)
	}
	if _, err := NewGroup("mpi", s, 0, 1, -1, time.Second, ""); err == nil || !strings.Contains(err.Error(), "want gloo or nccl") {
		t.Errorf("unknown backend: %v", err)
	}
}

func TestAutocast(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	x := ts.MustRand([]int64{2, 3, 8, 8}, gotch.Float, gotch.CPU)
	w := ts.MustRand([]int64{4, 3, 3, 3}, gotch.Float, gotch.CPU)
	defer x.MustDrop()
	defer w.MustDrop()
	conv := func() gotch.DType {
		y := ts.MustConv2d(x, w, ts.NewTensor(), []int64{1}, []int64{1}, []int64{1}, 1)
		defer y.MustDrop()
		return y.DType()
	}
	if d := conv(); d != gotch.Float {
		t.Fatalf("before autocast: %v", d)
	}
	err := Autocast(gotch.CPU, gotch.BFloat16, func() error {
		if d := conv(); d != gotch.BFloat16 {
			t.Errorf("inside autocast bf16: conv gives %v", d)
		}
		return Autocast(gotch.CPU, gotch.BFloat16, func() error { // nested
			if d := conv(); d != gotch.BFloat16 {
				t.Errorf("nested: %v", d)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if d := conv(); d != gotch.Float {
		t.Errorf("after autocast: conv gives %v, want float (state restored)", d)
	}
	if err := Autocast(gotch.CPU, gotch.Float, func() error { return nil }); err == nil {
		t.Error("autocast to float32 accepted")
	}
	want := errors.New("from f")
	if err := Autocast(gotch.CPU, gotch.BFloat16, func() error { return want }); err != want {
		t.Errorf("f's error: got %v", err)
	}
}

func TestChannelsLast(t *testing.T) {
	x := ts.MustRand([]int64{2, 3, 5, 7}, gotch.Float, gotch.CPU)
	defer x.MustDrop()
	before := x.Float64Values()
	alias := x.MustShallowClone()
	defer alias.MustDrop()
	if IsChannelsLast(x) {
		t.Fatal("fresh tensor reported channels last")
	}
	if err := SetChannelsLast(x, true); err != nil {
		t.Fatal(err)
	}
	if !IsChannelsLast(x) || !IsChannelsLast(alias) {
		t.Fatalf("after SetChannelsLast: %v, alias %v", IsChannelsLast(x), IsChannelsLast(alias))
	}
	st := x.MustStride()
	if st[1] != 1 || st[3] != 3 {
		t.Errorf("strides %v, want NHWC (channel stride 1)", st)
	}
	if got := x.Float64Values(); !slices.Equal(got, before) {
		t.Error("values changed with the layout")
	}
	y, err := ChannelsLast(x.MustContiguous(false))
	if err != nil {
		t.Fatal(err)
	}
	defer y.MustDrop()
	if !IsChannelsLast(y) {
		t.Error("ChannelsLast result is not channels last")
	}
	if err := SetChannelsLast(x, false); err != nil || IsChannelsLast(x) {
		t.Errorf("back to contiguous: %v, %v", err, IsChannelsLast(x))
	}
	v := ts.MustOnes([]int64{3}, gotch.Float, gotch.CPU)
	defer v.MustDrop()
	if err := SetChannelsLast(v, true); err != nil {
		t.Errorf("1-D tensor: %v (want left alone)", err)
	}
}

func TestUnscale(t *testing.T) {
	a := ts.MustOfSlice([]float32{2, 4})
	b := ts.MustOfSlice([]float32{8})
	defer a.MustDrop()
	defer b.MustDrop()
	inf, err := Unscale([]*ts.Tensor{a, nil, b}, 0.5)
	if err != nil || inf {
		t.Fatalf("finite: inf=%v err=%v", inf, err)
	}
	if got := append(a.Float64Values(), b.Float64Values()...); !slices.Equal(got, []float64{1, 2, 4}) {
		t.Errorf("unscaled to %v, want [1 2 4]", got)
	}
	c := ts.MustOfSlice([]float32{1, float32(math.Inf(1))})
	defer c.MustDrop()
	if inf, err := Unscale([]*ts.Tensor{a, c}, 1); err != nil || !inf {
		t.Errorf("with an infinity: inf=%v err=%v", inf, err)
	}
	n := ts.MustOfSlice([]float32{float32(math.NaN())})
	defer n.MustDrop()
	if inf, _ := Unscale([]*ts.Tensor{n}, 1); !inf {
		t.Error("NaN not found")
	}
}

// The native layer's own kernels (one-pass SGD, bf16 rounding, max-pooling)
// run on libtorch's intra-op threads: its split uses both threads when
// libtorch has two, one when it has one. And native.cpp calls no
// at::parallel_for, a header template whose OpenMP pragma a file compiled
// without -fopenmp drops: the SGD and the bf16 rounding ran on one thread
// that way, unnoticed, until a profile showed it (ResNet-18's update 13 ms
// on one thread, 7 on two).
func TestParallelThreads(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer lib.AtSetNumThreads(lib.AtGetNumThreads())
	for _, c := range []struct{ threads, want int }{{1, 1}, {2, 2}} {
		lib.AtSetNumThreads(c.threads)
		if got := parallelThreads(1 << 20); got != c.want {
			t.Errorf("%d intra-op threads: %d ran a part, want %d", c.threads, got, c.want)
		}
	}
	if got := parallelThreads(1); got != 1 {
		t.Errorf("one item: %d threads ran a part, want 1", got)
	}
	src, err := os.ReadFile("native.cpp")
	if err != nil {
		t.Fatal(err)
	}
	for i, line := range strings.Split(string(src), "\n") {
		if code, _, _ := strings.Cut(line, "//"); strings.Contains(code, "at::parallel_for") {
			t.Errorf("native.cpp:%d calls at::parallel_for, which runs serially here: use parallelFor", i+1)
		}
	}
}
