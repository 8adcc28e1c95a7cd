package torch

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

func TestParseDevice(t *testing.T) {
	cuda := gotch.CUDA.IsAvailable()
	tests := []struct {
		in      string
		want    string
		wantErr string
	}{
		{in: "cpu", want: "cpu"},
		{in: " CPU ", want: "cpu"},
		{in: "gpu", wantErr: "want auto, cpu, cuda or cuda:N"},
		{in: "cuda:x", wantErr: "want auto, cpu, cuda or cuda:N"},
		{in: "cuda:-1", wantErr: "want auto, cpu, cuda or cuda:N"},
		{in: "cuda:99", wantErr: "cuda:99"},
	}
	if cuda {
		tests = append(tests, struct{ in, want, wantErr string }{in: "cuda", want: "cuda:0"})
		tests = append(tests, struct{ in, want, wantErr string }{in: "auto", want: "cuda:0"})
	} else {
		tests = append(tests, struct{ in, want, wantErr string }{in: "cuda", wantErr: "--device cpu"})
		tests = append(tests, struct{ in, want, wantErr string }{in: "auto", want: "cpu"})
		tests = append(tests, struct{ in, want, wantErr string }{in: "", want: "cpu"})
	}
	for _, tt := range tests {
		d, err := ParseDevice(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseDevice(%q) error = %v, want one containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseDevice(%q): %v", tt.in, err)
			continue
		}
		if got := DeviceName(d); got != tt.want {
			t.Errorf("ParseDevice(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestBuildInfo(t *testing.T) {
	b := BuildInfo()
	if b.Libtorch.Version == "" || b.Gotch != "v0.9.1" || b.Libtorch.LibDir == "" {
		t.Fatalf("incomplete build description: %+v", b)
	}
}

// replacedCalls are ops that fail to compile against some libtorch version,
// with a Go call that reaches each.
var replacedCalls = map[string]func() error{
	"atg_empty_permuted": func() error {
		x, err := ts.EmptyPermuted([]int64{2, 3}, []int64{1, 0}, gotch.Float, gotch.CPU)
		if err == nil {
			x.MustDrop()
		}
		return err
	},
	"atg_nonzero_static": func() error {
		x := ts.MustOnes([]int64{4}, gotch.Float, gotch.CPU)
		defer x.MustDrop()
		y, err := x.NonzeroStatic(2, -1, false)
		if err == nil {
			y.MustDrop()
		}
		return err
	},
}

func TestReplacedOpReturnsError(t *testing.T) {
	th := NewThread(1)
	defer th.Close()
	b := BuildInfo()
	called := 0
	for op, call := range replacedCalls {
		if !b.Replaced(op) {
			continue
		}
		called++
		err := th.Do(call)
		if err == nil {
			t.Errorf("%s was replaced but returned no error", op)
			continue
		}
		if !strings.Contains(err.Error(), op) || !strings.Contains(err.Error(), b.Libtorch.Version) {
			t.Errorf("%s: error %q does not name the op and libtorch %s", op, err, b.Libtorch.Version)
		}
	}
	if called == 0 {
		t.Skipf("none of the ops this test knows how to call was replaced for libtorch %s (replaced: %v)", b.Libtorch.Version, b.ReplacedOps)
	}
	// The thread still works after the errors.
	if err := th.Do(func() error {
		x := ts.MustOnes([]int64{2}, gotch.Float, gotch.CPU)
		defer x.MustDrop()
		s := x.MustSum(gotch.Float, false)
		defer s.MustDrop()
		if v := s.Float64Values()[0]; v != 2 {
			return fmt.Errorf("sum = %v", v)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func TestSelfTestLossDrops(t *testing.T) {
	th := NewThread(0)
	defer th.Close()
	var r SelfTestResult
	err := th.Do(func() (err error) { r, err = SelfTest(gotch.CPU, 30); return err })
	if err != nil {
		t.Fatal(err)
	}
	if !(r.LastLoss < r.FirstLoss*0.5) {
		t.Fatalf("tiny conv net loss went from %.4f to %.4f in 30 SGD steps; want it at least halved", r.FirstLoss, r.LastLoss)
	}
}

func TestThreadHoldsGradModeAndThreadsAcrossGoroutines(t *testing.T) {
	th := NewThread(2)
	defer th.Close()
	if th.Threads() != 2 {
		t.Fatalf("Threads() = %d, want 2", th.Threads())
	}
	// One goroutine turns grad off and back on inside Do; the others
	// must always see grad enabled and 2 threads, and be able to backprop.
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 5; i++ {
				err := th.Do(func() error {
					if !GradEnabled() {
						return fmt.Errorf("goroutine %d: grad mode off", g)
					}
					if n := IntraOpThreads(); n != 2 {
						return fmt.Errorf("goroutine %d: %d intra-op threads", g, n)
					}
					if g%4 == 0 {
						return NoGrad(func() error {
							if GradEnabled() {
								return fmt.Errorf("grad on inside NoGrad")
							}
							return nil
						})
					}
					w := ts.MustOnes([]int64{3}, gotch.Float, gotch.CPU).MustSetRequiresGrad(true, true)
					defer w.MustDrop()
					s := w.MustMul(w, false).MustSum(gotch.Float, true)
					defer s.MustDrop()
					if err := s.Backward(); err != nil {
						return err
					}
					gr := w.MustGrad(false)
					defer gr.MustDrop()
					if v := gr.Float64Values()[0]; v != 2 {
						return fmt.Errorf("grad = %v, want 2", v)
					}
					return nil
				})
				if err != nil {
					errs <- err
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestThreadRecoversPanicsAndCloses(t *testing.T) {
	th := NewThread(1)
	err := th.Do(func() error { panic("boom") })
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("Do(panic) = %v, want an error with the panic value", err)
	}
	th.Close()
	if err := th.Do(func() error { return nil }); err != ErrClosed {
		t.Fatalf("Do after Close = %v, want ErrClosed", err)
	}
}

// A tensor updated in place is freed when it is dropped. gotch's in-place
// ops (Add_, Relu_, Zero_ …) receive their result from libtch as a new
// handle to the same tensor; gotch swapped it in without freeing the old
// one, whose reference then kept the tensor's memory for good (a ResNet-18
// inference pass leaked its residual blocks' outputs this way). tools/setup
// rewrites the prepared gotch to free the old handle (freeReplacedHandles);
// this fails on a gotch without the rewrite. 64 MiB tensors are mapped and
// unmapped whole by malloc, so the resident size tells whether they went.
func TestInPlaceOpsLeaveNoMemory(t *testing.T) {
	const mib = 64
	before := residentKB(t)
	for range 4 {
		x := ts.MustOnes([]int64{mib << 18}, gotch.Float, gotch.CPU)
		x.MustAdd_(x)
		x.MustRelu_()
		x.MustMulScalar_(ts.FloatScalar(0.5))
		if got := x.MustSum(gotch.Float, false); got.Float64Values()[0] != float64(mib<<18) {
			t.Fatalf("sum of (1+1)·0.5 over %d elements: %v", mib<<18, got.Float64Values())
		} else {
			got.MustDrop()
		}
		x.MustDrop()
	}
	if grew := residentKB(t) - before; grew > mib<<10 {
		t.Fatalf("resident memory grew by %d MiB over 4 tensors of %d MiB updated in place and dropped: the in-place ops' old handles keep them (is the gotch copy prepared by this tools/setup?)", grew>>10, mib)
	}
}

// residentKB is the process's resident set size (VmRSS) in KiB.
func residentKB(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc/self/status: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatalf("VmRSS %q: %v", l, err)
			}
			return kb
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}
