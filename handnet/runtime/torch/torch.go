// Package torch is handnet's one place for libtorch runtime set-up: the OS
// thread that runs torch work, the intra-op thread count, the device, and a
// description of the libtorch the binary was built against.
//
// libtorch keeps grad mode (and OpenMP's thread count) per OS thread, while
// goroutines move between OS threads between cgo calls. A Thread is a
// goroutine locked to its OS thread; all torch work of a model goes through
// its Do method, from any number of goroutines.
//
// Floor 0 (runtime) of handnet's layering: it imports packages of floor 0 only
// (README, "Packages"; tools/floors checks it).
package torch

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"

	"github.com/sugarme/gotch"
	lib "github.com/sugarme/gotch/libtch"
)

// Build describes the libtorch and gotch this binary was built against, as
// recorded by `make setup`.
type Build struct {
	Libtorch struct {
		Source      string   `json:"source"`
		Root        string   `json:"root"`
		LibDir      string   `json:"lib_dir"`
		IncludeDirs []string `json:"include_dirs"`
		Version     string   `json:"version"`
		CXX11ABI    bool     `json:"cxx11_abi"`
		CUDA        bool     `json:"cuda"`
		CUDAVersion string   `json:"cuda_version"`
	} `json:"libtorch"`
	Gotch       string   `json:"gotch"`
	ReplacedOps []string `json:"replaced_ops"`
}

// BuildInfo returns the build description written by `make setup`.
func BuildInfo() Build {
	var b Build
	if err := json.Unmarshal([]byte(lib.HandnetBuild), &b); err != nil {
		panic("torch: malformed build description from tools/setup: " + err.Error())
	}
	return b
}

// Replaced tells whether setup replaced the wrapper of op (e.g.
// "atg__cslt_compress") because it does not compile against this libtorch.
func (b Build) Replaced(op string) bool {
	for _, r := range b.ReplacedOps {
		if r == op {
			return true
		}
	}
	return false
}

// UsableCPUs is the number of CPUs this process may run on: the affinity
// mask, capped by a cgroup CPU quota (both as the Go runtime sees them).
func UsableCPUs() int {
	n := runtime.NumCPU()
	if g := runtime.GOMAXPROCS(0); g < n {
		n = g
	}
	return max(n, 1)
}

// ErrDeviceName is wrapped by ParseDevice's errors for names it does not
// know (as opposed to devices that are not there).
var ErrDeviceName = errors.New("unknown device name")

// ParseDevice reads a device name: "auto" (CUDA 0 when available, else
// CPU), "cpu", "cuda" (CUDA 0) or "cuda:N". CUDA devices must exist.
func ParseDevice(name string) (gotch.Device, error) {
	s := strings.ToLower(strings.TrimSpace(name))
	switch {
	case s == "" || s == "auto":
		if gotch.CUDA.IsAvailable() {
			return gotch.CudaBuilder(0), nil
		}
		return gotch.CPU, nil
	case s == "cpu":
		return gotch.CPU, nil
	case s == "cuda" || strings.HasPrefix(s, "cuda:"):
		idx := 0
		if s != "cuda" {
			n, err := strconv.Atoi(strings.TrimPrefix(s, "cuda:"))
			if err != nil || n < 0 {
				return gotch.Device{}, fmt.Errorf("device %q: %w: want auto, cpu, cuda or cuda:N with N a GPU index", name, ErrDeviceName)
			}
			idx = n
		}
		count := 0
		if gotch.CUDA.IsAvailable() {
			count = int(gotch.CUDA.DeviceCount())
		}
		if idx >= count {
			if !BuildInfo().Libtorch.CUDA {
				return gotch.Device{}, fmt.Errorf("device %q: this handnet is built against a CPU-only libtorch (%s); rebuild with a CUDA libtorch (LIBTORCH_USE_PYTORCH=1 make setup build) or use --device cpu",
					name, BuildInfo().Libtorch.Version)
			}
			return gotch.Device{}, fmt.Errorf("device %q: %d CUDA device(s) visible; check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES, or use --device cpu", name, count)
		}
		return gotch.CudaBuilder(uint(idx)), nil
	}
	return gotch.Device{}, fmt.Errorf("device %q: %w: want auto, cpu, cuda or cuda:N", name, ErrDeviceName)
}

// DeviceName formats d the way ParseDevice reads it.
func DeviceName(d gotch.Device) string {
	if d.IsCuda() {
		return fmt.Sprintf("cuda:%d", d.Value)
	}
	return "cpu"
}

// Thread runs torch work on one goroutine locked to one OS thread, so that
// grad mode and the intra-op thread count hold for every call.
type Thread struct {
	work    chan func()
	done    chan struct{}
	threads int
	once    sync.Once
}

// ErrClosed is returned by Do after Close.
var ErrClosed = errors.New("torch: thread closed")

// NewThread starts a torch thread with the given number of intra-op
// threads; threads <= 0 means UsableCPUs().
func NewThread(threads int) *Thread {
	if threads <= 0 {
		threads = UsableCPUs()
	}
	t := &Thread{work: make(chan func()), done: make(chan struct{}), threads: threads}
	ready := make(chan struct{})
	go func() {
		// Locked for good: when the goroutine ends (Close), Go ends the OS
		// thread with it, and with it the OpenMP team libtorch started for
		// it (a thread given back to Go would keep the team and its memory).
		runtime.LockOSThread()
		lib.AtSetNumThreads(threads)
		t.threads = lib.AtGetNumThreads()
		close(ready)
		for {
			select {
			case fn := <-t.work:
				fn()
			case <-t.done:
				return
			}
		}
	}()
	<-ready
	return t
}

// Threads returns the intra-op thread count in force on the thread.
func (t *Thread) Threads() int { return t.threads }

// Do runs fn on the torch thread and returns its error. Calls from many
// goroutines are served one at a time. A panic in fn (gotch's Must*
// functions panic) is returned as an error rather than crashing.
func (t *Thread) Do(fn func() error) (err error) {
	res := make(chan error, 1)
	call := func() {
		defer func() {
			if r := recover(); r != nil {
				if os.Getenv("HANDNET_DEBUG") != "" {
					res <- fmt.Errorf("torch: %v\n%s", r, debug.Stack())
					return
				}
				res <- fmt.Errorf("torch: %s (set HANDNET_DEBUG=1 for a stack trace)", Clean(fmt.Sprint(r)))
			}
		}()
		res <- fn()
	}
	select {
	case <-t.done:
		return ErrClosed
	case t.work <- call:
	}
	return <-res
}

// Close stops the thread. Calls of Do after Close return ErrClosed.
func (t *Thread) Close() { t.once.Do(func() { close(t.done) }) }

// ManualSeed seeds libtorch's default random generators (CPU and CUDA).
func ManualSeed(seed int64) { lib.AtManualSeed(seed) }

// IntraOpThreads returns the calling OS thread's intra-op thread count.
func IntraOpThreads() int { return lib.AtGetNumThreads() }

// NoGrad runs fn with gradient tracking off and restores the previous grad
// mode afterwards (unlike gotch's ts.NoGrad, it nests). Call it on a Thread.
func NoGrad(fn func() error) error {
	prev, err := lib.AtGradSetEnabledBool(false)
	if err != nil {
		return err
	}
	defer lib.AtGradSetEnabledBool(prev)
	return fn()
}

// GradEnabled reports the calling OS thread's grad mode.
func GradEnabled() bool {
	prev, err := lib.AtGradSetEnabledBool(true)
	if err != nil {
		return false
	}
	lib.AtGradSetEnabledBool(prev)
	return prev
}

// Clean cuts the C++ backtrace libtorch appends to its error messages
// ("Exception raised from … frame #0: …") and joins what is left on one
// line; set HANDNET_DEBUG=1 to keep everything.
func Clean(msg string) string {
	if os.Getenv("HANDNET_DEBUG") != "" {
		return msg
	}
	cut := false
	for _, marker := range []string{"Exception raised from", "\nframe #", "Traceback of TorchScript"} {
		if i := strings.Index(msg, marker); i >= 0 {
			msg, cut = msg[:i], true
		}
	}
	if !cut {
		return msg
	}
	return strings.Join(strings.Fields(msg), " ")
}

// CleanError is Clean for an error (nil stays nil).
func CleanError(err error) error {
	if err == nil {
		return nil
	}
	if c := Clean(err.Error()); c != err.Error() {
		return errors.New(c)
	}
	return err
}
