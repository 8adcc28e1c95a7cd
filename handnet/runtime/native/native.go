// Package native is handnet's own C++ layer over libtorch, for what gotch's
// generated ops do not reach: c10d's TCP store and process groups (Gloo on the
// CPU, NCCL on CUDA), autocast with a chosen dtype, the channels-last memory
// format, and multi-tensor (_foreach_) kernels for the optimizer step and
// loss-scale checks. CUDA graphs belong here too (not yet written: they need
// a CUDA machine to be tested on).
//
// The C++ (native.cpp) is compiled by cgo against the libtorch that `make
// setup` (tools/setup) found, with the flags it writes into flags.go: the same
// include and library folders, C++ ABI and CUDA choice as gotch's copy, plus
// the features whose headers were found. Every C++ exception is caught at the
// boundary and comes back as a Go error. Features reports what this build has.
//
// Floor 0 (runtime) of handnet's layering: it imports packages of floor 0 only
// (README, "Packages"; tools/floors checks it).
package native

// #include <stdlib.h>
// #include "native.h"
import "C"

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// Features says what this build of the native layer can do.
type Features struct {
	Torch string `json:"torch"` // libtorch version it was compiled against
	Store bool   `json:"store"` // c10d TCPStore
	Gloo  bool   `json:"gloo"`  // c10d ProcessGroupGloo (CPU collectives)
	NCCL  bool   `json:"nccl"`  // c10d ProcessGroupNCCL (CUDA collectives)
	CUDA  bool   `json:"cuda"`  // CUDA-only native code compiled in
	// Missing says, for features this build lacks, why tools/setup left
	// them out.
	Missing map[string]string `json:"missing,omitempty"`
}

var (
	featuresOnce sync.Once
	features     Features
)

// BuildFeatures returns what this build has, as compiled (and, for what it
// lacks, why).
func BuildFeatures() Features {
	featuresOnce.Do(func() {
		p := C.hn_features()
		s := C.GoString(p)
		C.free(unsafe.Pointer(p))
		if err := json.Unmarshal([]byte(s), &features); err != nil {
			panic("native: malformed feature list " + s)
		}
		features.Missing = map[string]string{}
		for k, v := range setupMissing {
			features.Missing[k] = v
		}
	})
	return features
}

// String lists the features, e.g. "gloo, store; missing: nccl (not a CUDA build)".
func (f Features) String() string {
	var have, miss []string
	for _, x := range []struct {
		name string
		ok   bool
	}{{"store", f.Store}, {"gloo", f.Gloo}, {"nccl", f.NCCL}, {"cuda", f.CUDA}} {
		if x.ok {
			have = append(have, x.name)
		} else if why := f.Missing[x.name]; why != "" {
			miss = append(miss, x.name+" ("+why+")")
		} else {
			miss = append(miss, x.name)
		}
	}
	s := strings.Join(have, ", ")
	if len(miss) > 0 {
		s += "; missing: " + strings.Join(miss, ", ")
	}
	return s
}

// cerr turns a C error string into a Go error, freeing it.
func cerr(p *C.char) error {
	if p == nil {
		return nil
	}
	s := C.GoString(p)
	C.free(unsafe.Pointer(p))
	return errors.New(strings.TrimSpace(s))
}

func millis(d time.Duration) C.int64_t { return C.int64_t(d / time.Millisecond) }

// Store is a c10d TCPStore: a key/value server hosted by one process (rank
// 0, or torchrun's agent) that every rank connects to. Safe for concurrent
// use.
type Store struct {
	mu sync.Mutex
	p  *C.hn_store
}

// NewStore starts (server) or connects to (client) the TCP store at
// host:port. A client retries until timeout while the server is not up.
// worldSize is the number of clients the server expects (0: unknown).
// timeout also bounds Get. Keys, the process group's included, live under
// prefix + "/" (c10d's PrefixStore; no prefix when empty).
func NewStore(host string, port int, server bool, worldSize int, timeout time.Duration, prefix string) (*Store, error) {
	ch := C.CString(host)
	defer C.free(unsafe.Pointer(ch))
	cp := C.CString(prefix)
	defer C.free(unsafe.Pointer(cp))
	srv := C.int(0)
	if server {
		srv = 1
	}
	s := &Store{}
	if err := cerr(C.hn_store_new(ch, C.int(port), srv, C.int(worldSize), millis(timeout), cp, &s.p)); err != nil {
		return nil, err
	}
	runtime.SetFinalizer(s, (*Store).Close)
	return s, nil
}

func (s *Store) handle() (*C.hn_store, error) {
	if s.p == nil {
		return nil, errors.New("store closed")
	}
	return s.p, nil
}

// Set stores val under key.
func (s *Store) Set(key string, val []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, err := s.handle()
	if err != nil {
		return err
	}
	ck := C.CString(key)
	defer C.free(unsafe.Pointer(ck))
	cv := C.CBytes(append(val, 0))
	defer C.free(cv)
	return cerr(C.hn_store_set(p, ck, (*C.uint8_t)(cv), C.size_t(len(val))))
}

// Get returns key's value, waiting up to the store's timeout for it.
func (s *Store) Get(key string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, err := s.handle()
	if err != nil {
		return nil, err
	}
	ck := C.CString(key)
	defer C.free(unsafe.Pointer(ck))
	var v *C.uint8_t
	var n C.size_t
	if err := cerr(C.hn_store_get(p, ck, &v, &n)); err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(v))
	return C.GoBytes(unsafe.Pointer(v), C.int(n)), nil
}

// Add adds delta to the integer under key (0 when absent) and returns the sum.
func (s *Store) Add(key string, delta int64) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, err := s.handle()
	if err != nil {
		return 0, err
	}
	ck := C.CString(key)
	defer C.free(unsafe.Pointer(ck))
	var out C.int64_t
	if err := cerr(C.hn_store_add(p, ck, C.int64_t(delta), &out)); err != nil {
		return 0, err
	}
	return int64(out), nil
}

// Check tells whether key is set, without waiting.
func (s *Store) Check(key string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, err := s.handle()
	if err != nil {
		return false, err
	}
	ck := C.CString(key)
	defer C.free(unsafe.Pointer(ck))
	var ok C.int
	if err := cerr(C.hn_store_check(p, ck, &ok)); err != nil {
		return false, err
	}
	return ok != 0, nil
}

// Close disconnects (a server stops serving). It is safe to call twice.
func (s *Store) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.p != nil {
		C.hn_store_free(s.p)
		s.p = nil
	}
	runtime.SetFinalizer(s, nil)
}

// Group is a c10d process group of one backend. Its collectives must be
// called in the same order by every rank; calls are not safe for concurrent
// use.
type Group struct {
	p       *C.hn_group
	backend string
}

// Backends lists the backends NewGroup knows.
var Backends = []string{"gloo", "nccl"}

// NewGroup joins the process group of size ranks as rank, through the store
// every rank shares. device is -1 for the CPU (Gloo) or the CUDA index this
// rank uses (NCCL). timeout bounds every collective. Gloo binds to the
// interfaces named in GLOO_SOCKET_IFNAME, else to glooHost when not empty,
// else to the address this host's name resolves to.
func NewGroup(backend string, s *Store, rank, size, device int, timeout time.Duration, glooHost string) (*Group, error) {
	sp, err := s.handle()
	if err != nil {
		return nil, err
	}
	cb := C.CString(backend)
	defer C.free(unsafe.Pointer(cb))
	ch := C.CString(glooHost)
	defer C.free(unsafe.Pointer(ch))
	g := &Group{backend: backend}
	if err := cerr(C.hn_group_new(cb, sp, C.int(rank), C.int(size), C.int(device), millis(timeout), ch, &g.p)); err != nil {
		return nil, fmt.Errorf("%s process group: %w", backend, err)
	}
	runtime.SetFinalizer(g, (*Group).Close)
	return g, nil
}

// Backend returns the group's backend name.
func (g *Group) Backend() string { return g.backend }

func handles(tensors []*ts.Tensor) (*C.hn_tensor, func()) {
	if len(tensors) == 0 {
		return nil, func() {}
	}
	arr := (*C.hn_tensor)(C.malloc(C.size_t(len(tensors)) * C.size_t(unsafe.Sizeof(C.hn_tensor(nil)))))
	s := unsafe.Slice(arr, len(tensors))
	for i, t := range tensors {
		s[i] = C.hn_tensor(t.Ctensor())
	}
	return arr, func() { C.free(unsafe.Pointer(arr)); runtime.KeepAlive(tensors) }
}

// AllReduceMean replaces each tensor by its mean over the ranks, one
// all-reduce per bucket of at most bucketBytes.
func (g *Group) AllReduceMean(tensors []*ts.Tensor, bucketBytes int64) error {
	if g.p == nil {
		return errors.New("process group closed")
	}
	arr, free := handles(tensors)
	defer free()
	return cerr(C.hn_group_allreduce_mean(g.p, arr, C.int(len(tensors)), C.int64_t(bucketBytes)))
}

// Broadcast copies root's tensors into every rank's, bucketed likewise.
func (g *Group) Broadcast(tensors []*ts.Tensor, root int, bucketBytes int64) error {
	if g.p == nil {
		return errors.New("process group closed")
	}
	arr, free := handles(tensors)
	defer free()
	return cerr(C.hn_group_broadcast(g.p, arr, C.int(len(tensors)), C.int(root), C.int64_t(bucketBytes)))
}

// AllReduceSum replaces vals by their sums over the ranks.
func (g *Group) AllReduceSum(vals []float64) error {
	if g.p == nil {
		return errors.New("process group closed")
	}
	if len(vals) == 0 {
		return nil
	}
	c := (*C.double)(C.malloc(C.size_t(len(vals)) * 8))
	defer C.free(unsafe.Pointer(c))
	cs := unsafe.Slice(c, len(vals))
	for i, v := range vals {
		cs[i] = C.double(v)
	}
	if err := cerr(C.hn_group_allreduce_sum_f64(g.p, c, C.int(len(vals)))); err != nil {
		return err
	}
	for i := range vals {
		vals[i] = float64(cs[i])
	}
	return nil
}

// Close leaves the group. It is safe to call twice.
func (g *Group) Close() {
	if g.p != nil {
		C.hn_group_free(g.p)
		g.p = nil
	}
	runtime.SetFinalizer(g, nil)
}

// ReleaseMemory gives the C heap's free memory back to the system (glibc's
// malloc_trim): libtorch's freed activations otherwise stay resident at the
// high-water mark of the largest batch. It takes milliseconds; call it now
// and then, not per step.
func ReleaseMemory() { C.hn_release_memory() }

// MallocTuned says whether handnet set glibc malloc's thresholds when the
// process started: blocks up to 32 MiB come from the heap instead of a
// fresh mmap, up to 256 MiB of freed memory stays for the next step, and
// every thread allocates from one heap,
// so that a training or inference step does not page-fault its memory in
// anew (native.cpp, tuneMalloc). False when the user's GLIBC_TUNABLES or
// MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ set them.
func MallocTuned() bool { return C.hn_malloc_tuning() == 1 }

// SGDStep applies torch.optim.SGD's update (dampening 0, no Nesterov) to
// params from grads, then zeroes the gradients; grads[i] nil or undefined
// skips params[i]. bufs holds the momentum buffers: a nil entry gets a new
// buffer (the first step of that parameter). fused runs it in one pass
// over each parameter, its gradient and its buffer where they are dense
// fp32 CPU tensors and the CPU has AVX-512 (six reads and writes of its
// size instead of nine; a ResNet-18's step 17 → 11-14 ms here), else as
// multi-tensor kernels (_foreach_): either way with the same bits as the
// per-parameter kernels on the CPU.
func SGDStep(params, grads, bufs []*ts.Tensor, lr, momentum, weightDecay float64, fused bool) error {
	n := len(params)
	if len(grads) != n || len(bufs) != n {
		return fmt.Errorf("sgd: %d params, %d grads, %d buffers", n, len(grads), len(bufs))
	}
	if n == 0 {
		return nil
	}
	mem := C.malloc(C.size_t(3*n) * C.size_t(unsafe.Sizeof(C.hn_tensor(nil))))
	defer C.free(mem)
	all := unsafe.Slice((*C.hn_tensor)(mem), 3*n)
	p, g, b := all[:n], all[n:2*n], all[2*n:]
	for i := range params {
		p[i] = C.hn_tensor(params[i].Ctensor())
		g[i], b[i] = nil, nil
		if grads[i] != nil {
			g[i] = C.hn_tensor(grads[i].Ctensor())
		}
		if bufs[i] != nil {
			b[i] = C.hn_tensor(bufs[i].Ctensor())
		}
	}
	f := C.int(0)
	if fused {
		f = 1
	}
	err := cerr(C.hn_sgd_step(&p[0], &g[0], &b[0], C.int(n), C.double(lr), C.double(momentum), C.double(weightDecay), f))
	for i := range bufs {
		if bufs[i] == nil && b[i] != nil {
			bufs[i] = ts.FromCtensor(unsafe.Pointer(b[i]))
		}
	}
	runtime.KeepAlive(params)
	runtime.KeepAlive(grads)
	return err
}

// Autocast runs f with mixed precision (torch.autocast) on device's kind of
// device, for ops of the calling thread: eligible ops (convolutions, matrix
// products) compute in dtype, gotch.BFloat16 or gotch.Half. The previous
// state comes back afterwards, and the cache of cast weights is cleared
// when the outermost region ends. Call it on a torch thread (autocast, as
// grad mode, is thread-local).
func Autocast(device gotch.Device, dtype gotch.DType, f func() error) (ferr error) {
	cuda := C.int(0)
	if device.IsCuda() {
		cuda = 1
	}
	// Autocast is the OS thread's state: f runs on this thread (a
	// goroutine that moved would leave it on for whatever runs here next),
	// and the state is restored even if f panics.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var pe, pd C.int
	if err := cerr(C.hn_autocast_enter(cuda, C.int(dtype.CInt()), &pe, &pd)); err != nil {
		return err
	}
	defer func() {
		if err := cerr(C.hn_autocast_exit(cuda, pe, pd)); err != nil && ferr == nil {
			ferr = err
		}
	}()
	return f()
}

// SetChannelsLast re-lays t out in place, channels last (NHWC in memory)
// when on, contiguous NCHW otherwise; every handle on t's data (a model's
// parameter, its optimizer's) sees the new layout. Tensors that are not
// 4-D are left alone.
func SetChannelsLast(t *ts.Tensor, on bool) error {
	o := C.int(0)
	if on {
		o = 1
	}
	err := cerr(C.hn_set_channels_last(C.hn_tensor(t.Ctensor()), o))
	runtime.KeepAlive(t)
	return err
}

// ChannelsLast returns t laid out channels last, as a new tensor handle.
func ChannelsLast(t *ts.Tensor) (*ts.Tensor, error) { return ChannelsLastAs(t, t.DType()) }

// ChannelsLastAs returns t converted to dtype and laid out channels last,
// in one copy (or none when t already is both), as a new tensor handle.
func ChannelsLastAs(t *ts.Tensor, dtype gotch.DType) (*ts.Tensor, error) {
	var out C.hn_tensor
	return result(&out, cerr(C.hn_channels_last(C.hn_tensor(t.Ctensor()), C.int(dtype.CInt()), &out)), t)
}

// optional is t's handle for the native layer: NULL for a nil or
// undefined tensor (an absent bias).
func optional(t *ts.Tensor) C.hn_tensor {
	if t == nil || t.Ctensor() == nil {
		return nil
	}
	return C.hn_tensor(t.Ctensor())
}

// result is the tensor a native call wrote to *out, or its error; the
// inputs in keep stay alive until the call has returned (Go may otherwise
// free a tensor whose handle it passed to C).
func result(out *C.hn_tensor, err error, keep ...*ts.Tensor) (*ts.Tensor, error) {
	runtime.KeepAlive(keep)
	if err != nil {
		return nil, err
	}
	return ts.FromCtensor(unsafe.Pointer(*out)), nil
}

// IsChannelsLast says whether t is laid out channels last (and not also
// plainly contiguous).
func IsChannelsLast(t *ts.Tensor) bool {
	r := C.hn_is_channels_last(C.hn_tensor(t.Ctensor())) != 0
	runtime.KeepAlive(t)
	return r
}

// Unscale multiplies the tensors (gradients; nil entries are skipped) by
// invScale in place, in one multi-tensor kernel, and reports whether any
// then holds a NaN or an infinity: the check of mixed-precision loss
// scaling, after which the step is skipped and the scale lowered.
func Unscale(tensors []*ts.Tensor, invScale float64) (foundInf bool, err error) {
	var live []*ts.Tensor
	for _, t := range tensors {
		if t != nil {
			live = append(live, t)
		}
	}
	if len(live) == 0 {
		return false, nil
	}
	arr, free := handles(live)
	defer free()
	var fi C.int
	if err := cerr(C.hn_unscale(arr, C.int(len(live)), C.double(invScale), &fi)); err != nil {
		return false, err
	}
	return fi != 0, nil
}

// CUDAMemory returns the total memory of CUDA device index (an error on
// builds without CUDA).
func CUDAMemory(index int) (total int64, err error) {
	var f, t C.int64_t
	if err := cerr(C.hn_cuda_mem_info(C.int(index), &f, &t)); err != nil {
		return 0, err
	}
	return int64(t), nil
}

// Conv2d is conv2d(x, w, b, stride, padding, dilation, groups) with
// autograd, as libtorch computes it, except where libtorch 1.13 would run
// an fp32 CPU convolution through im2col and the BLAS (a batch of 1 with
// at most 20,480 input elements and a kernel of at most 3 in a side, such
// as ResNet-18's layer4 at 128×170, or a 1×1 kernel on one thread): with a
// reference BLAS that takes ten times oneDNN's time, forward and backward.
// There the forward runs in oneDNN and the backward too (libtorch's
// convolution_backward over the batch plus one image of zeros, which adds
// nothing to the gradients). b may be nil.
func Conv2d(x, w, b *ts.Tensor, stride, padding, dilation [2]int64, groups int64) (*ts.Tensor, error) {
	var out C.hn_tensor
	err := cerr(C.hn_conv2d(C.hn_tensor(x.Ctensor()), C.hn_tensor(w.Ctensor()), optional(b), (*C.int64_t)(unsafe.Pointer(&stride[0])),
		(*C.int64_t)(unsafe.Pointer(&padding[0])), (*C.int64_t)(unsafe.Pointer(&dilation[0])), C.int64_t(groups), &out))
	return result(&out, err, x, w, b)
}

// Linear is linear(x, w, b) = x·wᵀ + b with autograd, as libtorch computes
// it (nn.Linear's forward), except for a large fp32 layer on the CPU
// without autocast (a weight of 65,536 elements or more, x 2-D), which
// libtorch 1.13 runs in the BLAS it is linked with — Debian's reference
// BLAS, one thread, no vector kernels: there the forward and the input's
// gradient run in oneDNN (libtorch's mkldnn_linear), and the weight's
// gradient of up to 32 rows is a sum of outer products. The study CNN's
// fc1 at batch 1: forward 2.4 → 1.4 ms, backward 3.8–4.6 → 0.8 ms. b may
// be nil.
func Linear(x, w, b *ts.Tensor) (*ts.Tensor, error) {
	var out C.hn_tensor
	return result(&out, cerr(C.hn_linear(C.hn_tensor(x.Ctensor()), C.hn_tensor(w.Ctensor()), optional(b), &out)), x, w, b)
}

// oneDNNLinearCalls counts the layers Linear has run in oneDNN (the tests
// check the path taken).
func oneDNNLinearCalls() int64 { return int64(C.hn_onednn_linear_calls()) }

// BF16Conv says how a convolution under CPU autocast to bf16 runs (Conv2d,
// hence every training step and eager forward of a bf16 model on the CPU,
// and the bf16 inference form's convolutions). Either way its operands are
// rounded to bf16 and its output is bf16; the products are exact in fp32
// and summed in fp32 by both kernels, so the two ways differ only in the
// order of those sums.
type BF16Conv int

const (
	// BF16ConvAuto runs fp32 kernels unless the CPU has a bf16 matrix
	// unit (AMX-BF16), where the bf16 kernels are the fast ones: without
	// it (AVX-512 BF16 alone, or bf16 emulated) oneDNN's bf16 kernels took
	// 1.2-1.8x its fp32 kernels' time for most shapes. Decided by the CPU
	// alone, so a run computes the same bits every time. The default,
	// unless HANDNET_BF16_CONV says bf16 or fp32.
	BF16ConvAuto BF16Conv = -1
	// BF16ConvKernels always runs oneDNN's bf16 kernels, as PyTorch does.
	BF16ConvKernels BF16Conv = 0
	// BF16ConvFP32Kernels always runs fp32 kernels on the bf16-rounded
	// operands and rounds the output to bf16.
	BF16ConvFP32Kernels BF16Conv = 1
)

// SetBF16Conv sets how bf16 autocast convolutions run, for the whole
// process.
func SetBF16Conv(m BF16Conv) { C.hn_set_bf16_conv(C.int(m)) }

// BF16ConvEnv is the environment variable that sets the BF16Conv mode
// before SetBF16Conv is called: auto, bf16 or fp32.
const BF16ConvEnv = "HANDNET_BF16_CONV"

// CheckBF16ConvEnv returns an error naming the accepted values when
// HANDNET_BF16_CONV is set to anything but auto, bf16 or fp32 (or empty):
// the native layer takes such a value as auto, so a typo would silently
// choose the kernels. The command refuses it (exit code 2).
func CheckBF16ConvEnv() error {
	switch v := os.Getenv(BF16ConvEnv); v {
	case "", "auto", "bf16", "fp32":
		return nil
	default:
		return fmt.Errorf("%s=%q: want auto, bf16 or fp32 (bf16 convolutions' kernels; README, \"bf16 on the CPU\")", BF16ConvEnv, v)
	}
}

// BF16ConvMode returns the mode SetBF16Conv (or HANDNET_BF16_CONV) set.
func BF16ConvMode() BF16Conv { return BF16Conv(C.hn_bf16_conv_mode()) }

// BF16ConvFP32 says whether bf16 convolutions run on fp32 kernels now:
// as the mode says, and for BF16ConvAuto on this CPU.
func BF16ConvFP32() bool { return C.hn_bf16_conv_fp32() == 1 }

// parallelThreads returns how many threads ran a part of n items split
// as the native layer's own kernels split their work (the tests check that
// they use libtorch's intra-op threads).
func parallelThreads(n int64) int { return int(C.hn_parallel_threads(C.int64_t(n))) }

// roundBF16 is x rounded to bf16's precision as the bf16 convolutions on
// fp32 kernels round their operands (the tests compare it with the casts).
func roundBF16(x *ts.Tensor) (*ts.Tensor, error) {
	var out C.hn_tensor
	return result(&out, cerr(C.hn_round_bf16(C.hn_tensor(x.Ctensor()), &out)), x)
}

// oneDNNConvCalls counts the convolutions Conv2d has run in oneDNN where
// libtorch would have taken the BLAS (the tests check the path taken).
func oneDNNConvCalls() int64 { return int64(C.hn_onednn_conv_calls()) }

// FlushDenormal turns flushing of denormal floats to zero on or off (FTZ
// and DAZ, what torch.set_flush_denormal sets) for the calling OS thread
// and its intra-op threads; call it on a torch thread. It reports whether
// the CPU has the modes. With them on, a number below 1.2e-38 in fp32
// counts as 0: arithmetic on such numbers, which the CPU otherwise runs
// through a microcode path some hundred times slower, stays at full speed.
func FlushDenormal(on bool) bool {
	v := 0
	if on {
		v = 1
	}
	return C.hn_flush_denormal(C.int(v)) == 1
}

// InferenceMode runs f with c10::InferenceMode on (the calling OS thread's
// mode; call it on a torch thread): the forward passes of predict, eval,
// serve and validation, which need no gradient. It is faster than no-grad
// (no version counters or autograd records). Tensors made inside are
// inference tensors: they can never enter a backward pass nor be updated in
// place outside the mode, so nothing that training will touch later may be
// made in f (a model's parameters, a cache uploaded to the device).
func InferenceMode(f func() error) error {
	runtime.LockOSThread() // the guard is the OS thread's (see Autocast)
	defer runtime.UnlockOSThread()
	var g unsafe.Pointer
	if err := cerr(C.hn_inference_mode_enter(&g)); err != nil {
		return err
	}
	defer C.hn_inference_mode_exit(g)
	return f()
}

// Conv is a convolution whose weights are prepacked for oneDNN's CPU
// kernels (libtorch's mkldnn_prepacked ops), optionally with a fused ReLU:
// the weight layout is computed once instead of at every call.
type Conv struct {
	c *C.hn_conv
}

// PrepackConv prepacks weight w and bias b (nil: none) for inputs shaped
// like inputSize ([N, C, H, W]; other shapes run too) and laid out channels
// last (channelsLast) or NCHW: an input of the other layout, or of a batch
// size for which oneDNN picks other kernels, makes every call reorder the
// weights. A channels-last w shares its storage with the prepacked form.
// Call it on a torch thread.
func PrepackConv(w, b *ts.Tensor, stride, padding, dilation [2]int64, groups int64, inputSize [4]int64, relu, channelsLast bool) (*Conv, error) {
	bc := optional(b)
	r, cl := C.int(0), C.int(0)
	if relu {
		r = 1
	}
	if channelsLast {
		cl = 1
	}
	var out *C.hn_conv
	err := cerr(C.hn_conv_prepack(C.hn_tensor(w.Ctensor()), bc, (*C.int64_t)(unsafe.Pointer(&stride[0])),
		(*C.int64_t)(unsafe.Pointer(&padding[0])), (*C.int64_t)(unsafe.Pointer(&dilation[0])), C.int64_t(groups),
		(*C.int64_t)(unsafe.Pointer(&inputSize[0])), r, cl, &out))
	runtime.KeepAlive(w)
	runtime.KeepAlive(b)
	if err != nil {
		return nil, err
	}
	return &Conv{c: out}, nil
}

// Run applies the convolution to x; the output is a new tensor.
func (c *Conv) Run(x *ts.Tensor) (*ts.Tensor, error) {
	var out C.hn_tensor
	return result(&out, cerr(C.hn_conv_run(c.c, C.hn_tensor(x.Ctensor()), &out)), x)
}

// Close frees the prepacked weights; safe to call twice.
func (c *Conv) Close() {
	if c != nil && c.c != nil {
		C.hn_conv_free(c.c)
		c.c = nil
	}
}

// MaxPool2d is max_pool2d of x (no dilation, floor mode), with autograd
// when x requires a gradient, the values libtorch computes (NaN included)
// in less time. Without a gradient, on the CPU, for a channels-last float
// or bf16 x whose channels are a multiple of 16: one AVX-512 pass without
// indices (libtorch 1.13 computes and writes the indices too). For an NCHW
// float or bf16 x on the CPU: libtorch's channels-last kernel between two
// layout copies, the indices kept for libtorch's backward (its NCHW kernel
// is scalar: ResNet-18's max-pool at batch 16 30 ms, 11 this way).
// Otherwise libtorch's max_pool2d.
func MaxPool2d(x *ts.Tensor, kernel, stride, padding [2]int64) (*ts.Tensor, error) {
	var out C.hn_tensor
	err := cerr(C.hn_max_pool2d(C.hn_tensor(x.Ctensor()), (*C.int64_t)(unsafe.Pointer(&kernel[0])),
		(*C.int64_t)(unsafe.Pointer(&stride[0])), (*C.int64_t)(unsafe.Pointer(&padding[0])), &out))
	return result(&out, err, x)
}
