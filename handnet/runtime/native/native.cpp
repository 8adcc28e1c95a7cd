// handnet's native layer; see native.h. Compiled by cgo against the libtorch
// that tools/setup found, with the flags setup writes into flags.go:
//   HANDNET_GLOO  c10d's Gloo backend (gloo headers found)
//   HANDNET_NCCL  c10d's NCCL backend (CUDA build, nccl.h found)
//   HANDNET_CUDA  CUDA build with CUDA runtime headers
// Version differences are guarded with TORCH_VERSION_MAJOR/MINOR.
#ifndef HANDNET_SETUP
#error "handnet's native layer has no flags for a libtorch: run `go run github.com/handnet/handnet/tools/setup` in your module's root (in handnet's own checkout: make setup); see handnet's README, 'Use handnet from your Go program'"
#endif

#include "native.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/version.h>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef HANDNET_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef HANDNET_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif
#ifdef HANDNET_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <dlfcn.h>
#include <malloc.h>
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HN_AVX512_POOL 1
#endif

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace {

// PyTorch 2 split ProcessGroup into a front and per-device Backends; the
// Gloo and NCCL classes derive from Backend there, from ProcessGroup before.
#if TORCH_VERSION_MAJOR >= 2
using Backend = c10d::Backend;
#else
using Backend = c10d::ProcessGroup;
#endif

char* dup(const std::string& s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  if (p != nullptr) std::memcpy(p, s.c_str(), s.size() + 1);
  return p;
}

// HN_TRY/HN_CATCH turn every C++ exception into an error string (c10 errors
// without their C++ backtrace: Go adds the context).
#define HN_TRY try {
#define HN_CATCH                                             \
  }                                                          \
  catch (const c10::Error& e) {                              \
    return dup(e.what_without_backtrace());                  \
  }                                                          \
  catch (const std::exception& e) {                          \
    return dup(e.what());                                    \
  }                                                          \
  catch (...) {                                              \
    return dup("unknown C++ exception in handnet's native layer"); \
  }                                                          \
  return nullptr;

at::Tensor& T(hn_tensor t) { return *static_cast<at::Tensor*>(t); }

std::chrono::milliseconds ms(int64_t v) { return std::chrono::milliseconds(v); }

}  // namespace

struct hn_store {
  c10::intrusive_ptr<c10d::Store> store;
};

struct hn_group {
  c10::intrusive_ptr<Backend> pg;
  int rank = 0;
  int size = 1;
  int device = -1;  // -1: CPU
  std::chrono::milliseconds timeout{0};
};

namespace {

void wait(hn_group* g, c10::intrusive_ptr<c10d::Work> w) {
  // Gloo's own timeout (the group's) ends a stuck collective; the wait adds
  // the same bound for backends that do not.
  w->wait(g->timeout);
}

// forBuckets flattens runs of tensors that share dtype and device into
// buckets of at most bucket_bytes, calls op on each flat bucket, and copies
// the results back.
template <typename Op>
void forBuckets(hn_tensor* ts, int n, int64_t bucket_bytes, Op op) {
  int i = 0;
  while (i < n) {
    const at::Tensor& first = T(ts[i]);
    int j = i;
    int64_t bytes = 0;
    while (j < n) {
      const at::Tensor& t = T(ts[j]);
      if (t.scalar_type() != first.scalar_type() || t.device() != first.device()) break;
      int64_t b = t.numel() * static_cast<int64_t>(t.element_size());
      if (j > i && bytes + b > bucket_bytes) break;
      bytes += b;
      j++;
    }
    std::vector<at::Tensor> parts;
    parts.reserve(j - i);
    for (int k = i; k < j; k++) parts.push_back(T(ts[k]).reshape({-1}));
    at::Tensor flat = parts.size() == 1 ? parts[0].clone() : at::cat(parts);
    op(flat);
    int64_t off = 0;
    for (int k = i; k < j; k++) {
      at::Tensor& t = T(ts[k]);
      int64_t m = t.numel();
      t.copy_(flat.narrow(0, off, m).view(t.sizes()));
      off += m;
    }
    i = j;
  }
}

}  // namespace

extern "C" {

char* hn_features(void) {
  std::ostringstream o;
  o << "{\"torch\":\"" << TORCH_VERSION_MAJOR << "." << TORCH_VERSION_MINOR << "." << TORCH_VERSION_PATCH << "\"";
  o << ",\"store\":true";
#ifdef HANDNET_GLOO
  o << ",\"gloo\":true";
#else
  o << ",\"gloo\":false";
#endif
#ifdef HANDNET_NCCL
  o << ",\"nccl\":true";
#else
  o << ",\"nccl\":false";
#endif
#ifdef HANDNET_CUDA
  o << ",\"cuda\":true";
#else
  o << ",\"cuda\":false";
#endif
  o << "}";
  return dup(o.str());
}

char* hn_store_new(const char* host, int port, int is_server, int world_size, int64_t timeout_ms, const char* prefix,
                   hn_store** out) {
  HN_TRY
  c10d::TCPStoreOptions o;
  o.port = static_cast<std::uint16_t>(port);
  o.isServer = is_server != 0;
  if (world_size > 0) o.numWorkers = static_cast<std::size_t>(world_size);
  // handnet waits for the ranks itself, naming the ones that never came.
  o.waitWorkers = false;
  o.timeout = ms(timeout_ms);
  auto s = new hn_store();
  try {
    // c10d warns once per failed connection attempt while the store is not
    // up yet (dozens of lines) and errs when it gives up; handnet reports the
    // wait and its end itself, in one line each.
    struct Quiet {
      int saved = FLAGS_caffe2_log_level;
      Quiet() { FLAGS_caffe2_log_level = saved > 3 ? saved : 3; }
      ~Quiet() { FLAGS_caffe2_log_level = saved; }
    } quiet;
    c10::intrusive_ptr<c10d::Store> tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), o);
    std::string p(prefix);
    if (p.empty()) {
      s->store = tcp;
    } else {
      s->store = c10::make_intrusive<c10d::PrefixStore>(p, tcp);
    }
  } catch (...) {
    delete s;
    throw;
  }
  *out = s;
  HN_CATCH
}

char* hn_store_set(hn_store* s, const char* key, const uint8_t* val, size_t n) {
  HN_TRY
  std::vector<uint8_t> v(val, val + n);
  s->store->set(std::string(key), v);
  HN_CATCH
}

char* hn_store_get(hn_store* s, const char* key, uint8_t** val, size_t* n) {
  HN_TRY
  auto v = s->store->get(std::string(key));
  *n = v.size();
  *val = static_cast<uint8_t*>(std::malloc(v.size() + 1));
  if (!v.empty()) std::memcpy(*val, v.data(), v.size());
  HN_CATCH
}

char* hn_store_add(hn_store* s, const char* key, int64_t delta, int64_t* out) {
  HN_TRY
  *out = s->store->add(std::string(key), delta);
  HN_CATCH
}

char* hn_store_check(hn_store* s, const char* key, int* present) {
  HN_TRY
  *present = s->store->check({std::string(key)}) ? 1 : 0;
  HN_CATCH
}

void hn_store_free(hn_store* s) {
  try {
    delete s;
  } catch (...) {
  }
}

char* hn_group_new(const char* backend, hn_store* s, int rank, int size, int device, int64_t timeout_ms,
                   const char* gloo_host, hn_group** out) {
  HN_TRY
  std::string b(backend);
  auto g = new hn_group();
  g->rank = rank;
  g->size = size;
  g->device = device;
  g->timeout = ms(timeout_ms);
  try {
    if (b == "gloo") {
#ifdef HANDNET_GLOO
      auto opts = c10d::ProcessGroupGloo::Options::create(ms(timeout_ms));
      // As torch.distributed does: the interfaces in GLOO_SOCKET_IFNAME, else
      // (handnet) the host given, else the address this host's name resolves
      // to (loopback as a fallback).
      const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
      const char* hostname = gloo_host;
      if (ifname != nullptr && *ifname != 0) {
        std::stringstream list(ifname);
        std::string name;
        while (std::getline(list, name, ',')) {
          if (!name.empty()) opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
        }
      } else if (hostname != nullptr && *hostname != 0) {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(hostname));
      } else {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      opts->threads = 2;
      g->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(s->store, rank, size, opts);
#else
      throw std::runtime_error("this handnet was built without c10d's Gloo backend (no gloo headers when tools/setup ran)");
#endif
    } else if (b == "nccl") {
#ifdef HANDNET_NCCL
      if (device < 0) throw std::runtime_error("the NCCL backend needs a CUDA device");
      c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = ms(timeout_ms);
      g->pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(s->store, rank, size, opts);
#else
      throw std::runtime_error("this handnet was built without c10d's NCCL backend (a CUDA libtorch and nccl.h are needed when tools/setup runs)");
#endif
    } else {
      throw std::runtime_error("unknown backend \"" + b + "\": want gloo or nccl");
    }
  } catch (...) {
    delete g;
    throw;
  }
  *out = g;
  HN_CATCH
}


char* hn_group_allreduce_mean(hn_group* g, hn_tensor* ts, int n, int64_t bucket_bytes) {
  HN_TRY
  at::NoGradGuard no_grad;
  forBuckets(ts, n, bucket_bytes, [g](at::Tensor& flat) {
    std::vector<at::Tensor> v{flat};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    o.timeout = g->timeout;
    wait(g, g->pg->allreduce(v, o));
    flat.div_(g->size);
  });
  HN_CATCH
}

char* hn_group_broadcast(hn_group* g, hn_tensor* ts, int n, int root, int64_t bucket_bytes) {
  HN_TRY
  at::NoGradGuard no_grad;
  forBuckets(ts, n, bucket_bytes, [g, root](at::Tensor& flat) {
    std::vector<at::Tensor> v{flat};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.timeout = g->timeout;
    wait(g, g->pg->broadcast(v, o));
  });
  HN_CATCH
}

char* hn_group_allreduce_sum_f64(hn_group* g, double* vals, int n) {
  HN_TRY
  at::NoGradGuard no_grad;
  at::Tensor host = at::from_blob(vals, {n}, at::TensorOptions().dtype(at::kDouble)).clone();
  at::Tensor t = g->device >= 0 ? host.to(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(g->device))) : host;
  std::vector<at::Tensor> v{t};
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::SUM;
  o.timeout = g->timeout;
  wait(g, g->pg->allreduce(v, o));
  at::Tensor back = t.cpu().contiguous();
  std::memcpy(vals, back.data_ptr<double>(), sizeof(double) * n);
  HN_CATCH
}

// Autocast state per device type. PyTorch 2.4 replaced the per-device
// functions (set_cpu_enabled, set_autocast_gpu_dtype …) by ones taking the
// device type.
namespace {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
at::DeviceType devType(int cuda) { return cuda ? at::kCUDA : at::kCPU; }
bool acEnabled(int cuda) { return at::autocast::is_autocast_enabled(devType(cuda)); }
at::ScalarType acDtype(int cuda) { return at::autocast::get_autocast_dtype(devType(cuda)); }
void acSet(int cuda, bool on, at::ScalarType t) {
  at::autocast::set_autocast_enabled(devType(cuda), on);
  at::autocast::set_autocast_dtype(devType(cuda), t);
}
#else
bool acEnabled(int cuda) { return cuda ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled(); }
at::ScalarType acDtype(int cuda) {
  return cuda ? at::autocast::get_autocast_gpu_dtype() : at::autocast::get_autocast_cpu_dtype();
}
void acSet(int cuda, bool on, at::ScalarType t) {
  if (cuda) {
    at::autocast::set_enabled(on);
    at::autocast::set_autocast_gpu_dtype(t);
  } else {
    at::autocast::set_cpu_enabled(on);
    at::autocast::set_autocast_cpu_dtype(t);
  }
}
#endif
}  // namespace

char* hn_autocast_enter(int cuda, int dtype, int* prev_enabled, int* prev_dtype) {
  HN_TRY
  auto t = static_cast<at::ScalarType>(dtype);
  if (t != at::kBFloat16 && t != at::kHalf) return dup("autocast: dtype must be bfloat16 or float16");
  *prev_enabled = acEnabled(cuda) ? 1 : 0;
  *prev_dtype = static_cast<int>(acDtype(cuda));
  acSet(cuda, true, t);
  at::autocast::increment_nesting();
  HN_CATCH
}

char* hn_autocast_exit(int cuda, int prev_enabled, int prev_dtype) {
  HN_TRY
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  acSet(cuda, prev_enabled != 0, static_cast<at::ScalarType>(prev_dtype));
  HN_CATCH
}

char* hn_set_channels_last(hn_tensor t, int on) {
  HN_TRY
  at::Tensor& x = T(t);
  if (x.dim() != 4) return nullptr;
  at::NoGradGuard no_grad;
  x.set_data(x.contiguous(on ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  HN_CATCH
}

char* hn_channels_last(hn_tensor t, int dtype, hn_tensor* out) {
  HN_TRY
  const at::Tensor& x = T(t);
  auto st = static_cast<at::ScalarType>(dtype);
  *out = new at::Tensor(st == x.scalar_type() ? x.contiguous(at::MemoryFormat::ChannelsLast)
                                              : x.to(st, false, false, at::MemoryFormat::ChannelsLast));
  HN_CATCH
}

int hn_is_channels_last(hn_tensor t) {
  try {
    return T(t).is_contiguous(at::MemoryFormat::ChannelsLast) && !T(t).is_contiguous() ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

char* hn_unscale(hn_tensor* ts, int n, double inv_scale, int* found_inf) {
  HN_TRY
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> G, ok;
  for (int i = 0; i < n; i++) {
    if (ts[i] != nullptr && T(ts[i]).defined()) G.push_back(T(ts[i]));
  }
  *found_inf = 0;
  if (G.empty()) return nullptr;
  at::_foreach_mul_(G, inv_scale);
  for (auto& g : G) ok.push_back(at::isfinite(g).all());
  *found_inf = at::stack(ok).all().item<bool>() ? 0 : 1;
  HN_CATCH
}

char* hn_cuda_mem_info(int device, int64_t* free_bytes, int64_t* total_bytes) {
  HN_TRY
#ifdef HANDNET_CUDA
  *free_bytes = -1;
  *total_bytes = static_cast<int64_t>(at::cuda::getDeviceProperties(static_cast<c10::DeviceIndex>(device))->totalGlobalMem);
  return nullptr;
#else
  (void)device;
  *free_bytes = *total_bytes = -1;
  return dup("not a CUDA build of handnet's native layer");
#endif
  HN_CATCH
}

void hn_release_memory(void) { malloc_trim(0); }

namespace {

// hn_malloc_tuned records whether tuneMalloc set glibc's thresholds.
int hn_malloc_tuned = 0;

// tuneMalloc runs when the process loads handnet's native layer, before
// any tensor exists. glibc's malloc serves a block over its mmap threshold
// (128 KiB at first) with a fresh mmap and unmaps it at free, and gives the
// top of its heap back to the system past its trim threshold; it raises
// both as it sees large blocks freed, but a step of libtorch allocates and
// frees its activations and gradients anew, and in handnet's process each
// step kept faulting its memory in again, page by page: a study-CNN
// training step at batch 16, ~11,000 page faults (model's
// TestTrainingStepKeepsItsMemory under glibc's own thresholds). Blocks up to 32 MiB (glibc's largest mmap threshold) now
// come from the heap, up to 256 MiB of freed memory stays there for the
// next step, and every thread allocates from that one heap (M_ARENA_MAX 1,
// as in a Python process, whose tensors are made on one thread: glibc's
// per-thread heaps are 64 MiB pieces unmapped whole when they empty, and
// Go runs cgo calls on many threads): no faults once warm (model's TestTrainingStepKeepsItsMemory),
// peak memory unchanged, and ReleaseMemory still gives it all back. A
// user's own GLIBC_TUNABLES malloc settings or MALLOC_MMAP_THRESHOLD_ /
// MALLOC_TRIM_THRESHOLD_ are left as they are.
__attribute__((constructor)) void tuneMalloc() {
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if ((tunables != nullptr && std::strstr(tunables, "glibc.malloc.") != nullptr) ||
      std::getenv("MALLOC_MMAP_THRESHOLD_") != nullptr || std::getenv("MALLOC_TRIM_THRESHOLD_") != nullptr) {
    return;
  }
  hn_malloc_tuned = mallopt(M_ARENA_MAX, 1) == 1 && mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 256 << 20) == 1;
}

}  // namespace

int hn_malloc_tuning(void) { return hn_malloc_tuned; }

// ---- work split among libtorch's intra-op threads ----

namespace {

extern "C++" {
// parallelFor runs f(begin, end) over [0, n) split among libtorch's
// intra-op threads. at::parallel_for cannot: it is a header template whose
// OpenMP pragma this file, compiled without -fopenmp, drops. The OpenMP
// runtime libtorch loaded is reached by name at run time instead
// (GOMP_parallel, what `#pragma omp parallel` compiles to; libgomp and
// Intel's runtime both have it), with the thread count libtorch set on
// this thread; without it, or inside a parallel region, f runs serially.
struct Omp {
  void (*parallel)(void (*)(void*), void*, unsigned, unsigned);
  int (*num)();
  int (*id)();
};

const Omp& omp() {
  static const Omp o = {
      reinterpret_cast<void (*)(void (*)(void*), void*, unsigned, unsigned)>(dlsym(RTLD_DEFAULT, "GOMP_parallel")),
      reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "omp_get_num_threads")),
      reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "omp_get_thread_num"))};
  return o;
}

// grain is the least work worth a thread: n below 2·grain runs serially.
template <typename F>
void parallelFor(int64_t n, const F& f, int64_t grain = 1) {
  const Omp& o = omp();
  int threads = at::get_num_threads();
  if (o.parallel == nullptr || o.num == nullptr || o.id == nullptr || threads < 2 || n < 2 * std::max<int64_t>(grain, 1) ||
      at::in_parallel_region()) {
    f(0, n);
    return;
  }
  struct Ctx {
    const F* f;
    int64_t n;
    const Omp* o;
  } ctx{&f, n, &o};
  o.parallel(
      [](void* p) {
        auto* c = static_cast<Ctx*>(p);
        int64_t nt = c->o->num(), id = c->o->id();
        int64_t chunk = (c->n + nt - 1) / nt, b = id * chunk, e = std::min(c->n, b + chunk);
        if (b < e) (*c->f)(b, e);
      },
      &ctx, static_cast<unsigned>(threads), 0);
}
}  // extern "C++"

}  // namespace

// hn_parallel_threads runs parallelFor over n items (grain 1) and returns
// how many threads ran a part (for tests).
int hn_parallel_threads(int64_t n) {
  std::atomic<uint64_t> seen{0};
  const Omp& o = omp();
  parallelFor(n, [&](int64_t, int64_t) { seen |= uint64_t(1) << std::min(o.id ? o.id() : 0, 63); });
  return __builtin_popcountll(seen.load());
}

namespace {

// ---- SGD in one pass ----
//
// torch.optim.SGD's update (momentum m, weight decay wd, learning rate lr)
// is four kernels a parameter, each a pass over its memory, five with
// zero_grad: d = g + wd·p; buf = buf·m; buf = buf + d; p = p − lr·buf;
// g = 0 — nine reads and writes of a parameter's size (ResNet-18: 45 MB
// each, ~400 MB a step). sgdOnePass does it in one pass over p, g and buf
// (six), with the same arithmetic as ATen's vector kernels on this CPU:
// add with alpha is a fused multiply-add (vec::fmadd), so d = fma(p, wd, g)
// and p = fma(buf, −lr, p); buf·m and buf + d are rounded each (train's
// TestFusedSGDIsBitIdentical: the same bits as the per-parameter kernels).

#ifdef HN_AVX512_POOL
extern "C++" {
// sgdVec updates the 16 floats at i (the first k of them).
template <bool First, bool Decay>
__attribute__((target("avx512f,fma"), always_inline)) inline void sgdVec(float* p, float* g, float* b, int64_t i,
                                                                         __mmask16 k, __m512 vlr, __m512 vm,
                                                                         __m512 vwd) {
  __m512 vp = _mm512_maskz_loadu_ps(k, p + i);
  __m512 d = _mm512_maskz_loadu_ps(k, g + i);
  if (Decay) d = _mm512_fmadd_ps(vp, vwd, d);
  __m512 vb = First ? d : _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, b + i), vm), d);
  _mm512_mask_storeu_ps(b + i, k, vb);
  _mm512_mask_storeu_ps(p + i, k, _mm512_fmadd_ps(vb, vlr, vp));
  _mm512_mask_storeu_ps(g + i, k, _mm512_setzero_ps());
}

// sgdLoop is sgdOnePass for one (first step, weight decay) case: whole
// vectors two at a time, then the tail under a mask, no branch inside.
template <bool First, bool Decay>
__attribute__((target("avx512f,fma"))) void sgdLoop(float* p, float* g, float* b, int64_t n, float lr, float m,
                                                    float wd) {
  const __m512 vlr = _mm512_set1_ps(-lr), vm = _mm512_set1_ps(m), vwd = _mm512_set1_ps(wd);
  const __mmask16 all = 0xffff;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    sgdVec<First, Decay>(p, g, b, i, all, vlr, vm, vwd);
    sgdVec<First, Decay>(p, g, b, i + 16, all, vlr, vm, vwd);
  }
  for (; i < n; i += 16) {
    __mmask16 k = n - i >= 16 ? all : __mmask16((1u << (n - i)) - 1);
    sgdVec<First, Decay>(p, g, b, i, k, vlr, vm, vwd);
  }
}
}  // extern "C++"

void sgdOnePass(float* p, float* g, float* b, int64_t n, float lr, float m, float wd, bool first) {
  if (first) {
    wd != 0 ? sgdLoop<true, true>(p, g, b, n, lr, m, wd) : sgdLoop<true, false>(p, g, b, n, lr, m, wd);
  } else {
    wd != 0 ? sgdLoop<false, true>(p, g, b, n, lr, m, wd) : sgdLoop<false, false>(p, g, b, n, lr, m, wd);
  }
}

bool haveAVX512F() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
  return ok;
}
#else
void sgdOnePass(float*, float*, float*, int64_t, float, float, float, bool) {}
bool haveAVX512F() { return false; }
#endif

// onePassSGD applies the update to p with gradient g and momentum buffer
// slot (made at the first step) in one pass, when they are dense fp32 CPU
// tensors of one layout and the CPU has AVX-512; it says whether it did.
bool onePassSGD(at::Tensor& p, at::Tensor& g, hn_tensor& slot, double lr, double momentum, double weightDecay) {
  if (!haveAVX512F() || momentum == 0 || !p.device().is_cpu() || p.scalar_type() != at::kFloat ||
      g.scalar_type() != at::kFloat || !g.device().is_cpu() || !p.is_non_overlapping_and_dense() ||
      p.strides() != g.strides() || p.sizes() != g.sizes() || (p.requires_grad() && at::GradMode::is_enabled())) {
    return false;
  }
  bool first = slot == nullptr;
  at::Tensor b = first ? at::empty_like(p) : T(slot);
  if (!first && (b.scalar_type() != at::kFloat || b.strides() != p.strides() || b.sizes() != p.sizes())) return false;
  float* pp = p.data_ptr<float>();
  float* gp = g.data_ptr<float>();
  float* bp = b.data_ptr<float>();
  float flr = float(lr), fm = float(momentum), fwd = float(weightDecay);
  parallelFor(
      p.numel(), [&](int64_t lo, int64_t hi) { sgdOnePass(pp + lo, gp + lo, bp + lo, hi - lo, flr, fm, fwd, first); },
      32768);
  if (first) slot = new at::Tensor(b);
  p.unsafeGetTensorImpl()->bump_version();
  b.unsafeGetTensorImpl()->bump_version();
  g.unsafeGetTensorImpl()->bump_version();
  return true;
}

}  // namespace

char* hn_sgd_step(hn_tensor* params, hn_tensor* grads, hn_tensor* bufs, int n, double lr, double momentum,
                  double weight_decay, int fused) {
  HN_TRY
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> P, G, D;
  std::vector<int> idx;  // positions in bufs
  for (int i = 0; i < n; i++) {
    if (grads[i] == nullptr || !T(grads[i]).defined()) continue;
    P.push_back(T(params[i]));
    G.push_back(T(grads[i]));
    idx.push_back(i);
  }
  if (P.empty()) return nullptr;
  if (!fused) {
    for (size_t k = 0; k < P.size(); k++) {
      at::Tensor d = G[k];
      if (weight_decay != 0) d = d.add(P[k], weight_decay);
      if (momentum != 0) {
        hn_tensor& slot = bufs[idx[k]];
        if (slot == nullptr) {
          slot = new at::Tensor(d.clone().detach());
        } else {
          T(slot).mul_(momentum).add_(d, 1);
        }
        d = T(slot);
      }
      P[k].add_(d, -lr);
      G[k].zero_();
    }
    return nullptr;
  }
  {
    // One pass a parameter where it can (onePassSGD), the rest as
    // multi-tensor kernels.
    std::vector<at::Tensor> P2, G2;
    std::vector<int> idx2;
    for (size_t k = 0; k < P.size(); k++) {
      if (!onePassSGD(P[k], G[k], bufs[idx[k]], lr, momentum, weight_decay)) {
        P2.push_back(P[k]);
        G2.push_back(G[k]);
        idx2.push_back(idx[k]);
      }
    }
    if (P2.empty()) return nullptr;
    P.swap(P2);
    G.swap(G2);
    idx.swap(idx2);
  }
  D = weight_decay != 0 ? at::_foreach_add(G, P, weight_decay) : G;
  if (momentum != 0) {
    std::vector<at::Tensor> B, Dold;
    for (size_t k = 0; k < P.size(); k++) {
      hn_tensor& slot = bufs[idx[k]];
      if (slot == nullptr) {
        slot = new at::Tensor(D[k].clone().detach());
      } else {
        B.push_back(T(slot));
        Dold.push_back(D[k]);
      }
    }
    if (!B.empty()) {
      at::_foreach_mul_(B, momentum);
      at::_foreach_add_(B, Dold, 1);
    }
    D.clear();
    for (size_t k = 0; k < P.size(); k++) D.push_back(T(bufs[idx[k]]));
  }
  at::_foreach_add_(P, D, -lr);
  at::_foreach_zero_(G);
  HN_CATCH
}

void hn_group_free(hn_group* g) {
  try {
    delete g;
  } catch (...) {
  }
}

}  // extern "C"

// ---- inference ----

char* hn_inference_mode_enter(void** guard) {
  HN_TRY
  *guard = new c10::InferenceMode(true);
  HN_CATCH
}

void hn_inference_mode_exit(void* guard) { delete static_cast<c10::InferenceMode*>(guard); }

struct hn_conv {
  c10::IValue ctx;  // the ConvOpContext of mkldnn_prepacked::conv2d_prepack
};

namespace {

c10::OperatorHandle prepackedOp(const char* name) {
  auto op = c10::Dispatcher::singleton().findSchema({name, ""});
  if (!op.has_value()) {
    throw std::runtime_error(std::string("this libtorch has no ") + name +
                             " (built without oneDNN/mkldnn?): prepacked convolutions are not available");
  }
  return *op;
}

std::vector<int64_t> vec(const int64_t* p, int n) { return std::vector<int64_t>(p, p + n); }

}  // namespace

char* hn_conv_prepack(hn_tensor w, hn_tensor b, const int64_t* stride, const int64_t* padding, const int64_t* dilation,
                      int64_t groups, const int64_t* input_size, int relu, int channels_last, hn_conv** out) {
  HN_TRY
  static const c10::OperatorHandle op = prepackedOp("mkldnn_prepacked::conv2d_prepack");
  c10::InferenceMode guard;
  c10::optional<at::Tensor> bias;
  if (b != nullptr && T(b).defined()) bias = T(b).contiguous();
  // libtorch chooses the packed layout for channels-last inputs when the
  // weight it is given is laid out channels last, else for NCHW ones; a
  // layout for the other kind is reordered at every call. A 1x1 weight is
  // both contiguous and channels-last contiguous, and libtorch takes it for
  // NCHW unless its strides say otherwise: it is copied into explicit
  // channels-last strides.
  at::Tensor weight = T(w);
  if (channels_last) {
    if (weight.suggest_memory_format() != at::MemoryFormat::ChannelsLast || !weight.is_contiguous(at::MemoryFormat::ChannelsLast)) {
      weight = at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::ChannelsLast)).copy_(weight);
    }
  } else {
    weight = weight.contiguous();
  }
  torch::jit::Stack st;
  st.emplace_back(weight);
  st.emplace_back(bias);
  st.emplace_back(vec(stride, 2));
  st.emplace_back(vec(padding, 2));
  st.emplace_back(vec(dilation, 2));
  st.emplace_back(groups);
  st.emplace_back(vec(input_size, 4));
  st.emplace_back(std::string(relu ? "relu" : "none"));
  op.callBoxed(&st);
  *out = new hn_conv{st.at(0)};
  HN_CATCH
}

char* hn_conv_run(hn_conv* c, hn_tensor x, hn_tensor* out) {
  HN_TRY
  static const c10::OperatorHandle op = prepackedOp("mkldnn_prepacked::conv2d_run");
  torch::jit::Stack st;
  st.emplace_back(T(x));
  st.emplace_back(c->ctx);
  op.callBoxed(&st);
  *out = new at::Tensor(st.at(0).toTensor());
  HN_CATCH
}

void hn_conv_free(hn_conv* c) { delete c; }

// ---- convolutions libtorch would send to the BLAS ----

namespace {

// slowConv says whether libtorch 1.13's ConvParams::use_mkldnn turns an
// fp32 CPU convolution away from oneDNN to slow_conv2d (its rule, verbatim
// in effect, for groups 1, no dilation, not transposed).
bool slowConv(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride) {
  bool strided = stride[0] != 1 || stride[1] != 1;
  bool oneByOne = w.size(-1) == 1 && w.size(-2) == 1;
  if (!(strided || x.size(0) >= 16 || !oneByOne || at::get_num_threads() > 1)) return true;
  return !((w.size(-1) > 3 && w.size(-2) > 3) || x.size(0) > 1 || x.numel() > 20480);
}

std::atomic<int64_t> oneDnnConvCalls{0};  // OneDnnConv forwards (tests: the path taken)

struct OneDnnConv : public torch::autograd::Function<OneDnnConv> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            const at::Tensor& b, std::vector<int64_t> stride, std::vector<int64_t> padding,
                            std::vector<int64_t> dilation) {
    oneDnnConvCalls++;
    auto fmt = (x.suggest_memory_format() == at::MemoryFormat::ChannelsLast ||
                w.suggest_memory_format() == at::MemoryFormat::ChannelsLast)
                   ? at::MemoryFormat::ChannelsLast
                   : at::MemoryFormat::Contiguous;
    at::Tensor xc = x.contiguous(fmt), wc = w.contiguous(fmt);
    c10::optional<at::Tensor> bias;
    if (b.numel() > 0) bias = b.contiguous();  // b is empty without a bias (apply takes no undefined tensor)
    ctx->save_for_backward({xc, wc});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["bias"] = bias.has_value();
    return at::mkldnn_convolution(xc, wc, bias, padding, stride, dilation, 1);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    at::Tensor x = saved[0], w = saved[1], gy = grads[0];
    auto stride = ctx->saved_data["stride"].toIntVector();
    auto padding = ctx->saved_data["padding"].toIntVector();
    auto dilation = ctx->saved_data["dilation"].toIntVector();
    bool hasBias = ctx->saved_data["bias"].toBool();
    int64_t n = x.size(0);
    if (slowConv(x, w, stride)) {
      // One image of zeros more: libtorch's backward then runs in oneDNN.
      x = at::cat({x, at::zeros_like(x)}, 0);
      gy = at::cat({gy.contiguous(x.suggest_memory_format()), at::zeros_like(gy, x.suggest_memory_format())}, 0);
    }
    std::vector<int64_t> biasSizes;
    if (hasBias) biasSizes.push_back(w.size(0));
    auto r = at::convolution_backward(gy, x, w, hasBias ? c10::OptionalIntArrayRef(biasSizes) : c10::nullopt, stride,
                                      padding, dilation, false, std::vector<int64_t>(2, 0), 1,
                                      {ctx->needs_input_grad(0), ctx->needs_input_grad(1), hasBias && ctx->needs_input_grad(2)});
    at::Tensor gx = std::get<0>(r);
    if (gx.defined() && gx.size(0) != n) gx = gx.narrow(0, 0, n);
    return {gx, std::get<1>(r), hasBias ? std::get<2>(r) : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

namespace {

// conv2dAsLibtorch is hn_conv2d's convolution as libtorch would run it: libtorch's conv2d,
// or OneDnnConv where libtorch would take the BLAS. autocast says whether
// the call is under CPU autocast (then libtorch casts, and its choice of
// kernel is its own).
at::Tensor conv2dAsLibtorch(const at::Tensor& t, const at::Tensor& wt, const at::Tensor& bias,
                            const std::vector<int64_t>& st, const std::vector<int64_t>& pd,
                            const std::vector<int64_t>& dl, int64_t groups, bool autocast) {
  bool oneDnn = at::hasMKLDNN() && at::globalContext().userEnabledMkldnn() && t.device().is_cpu() && t.dim() == 4 &&
                t.scalar_type() == at::kFloat && wt.scalar_type() == at::kFloat && !t.is_mkldnn() && groups == 1 &&
                dl[0] == 1 && dl[1] == 1 && !autocast && slowConv(t, wt, st);
  if (oneDnn) {
    return OneDnnConv::apply(t, wt, bias.defined() ? bias : at::empty({0}, wt.options()), st, pd, dl);
  }
  return at::conv2d(t, wt, bias.defined() ? c10::optional<at::Tensor>(bias) : c10::nullopt, st, pd, dl, groups);
}

// ---- fully connected layers libtorch would send to the BLAS ----
//
// libtorch's linear is an addmm, which calls the BLAS it is linked with:
// Debian's reference BLAS runs on one thread without vector kernels. For a
// large layer (the study CNN's fc1, 13,056 -> 256) at small batches oneDNN's
// inner product, libtorch's own mkldnn_linear, is the faster kernel: python3,
// same libtorch, batch 1: forward 2.4 -> 1.4 ms, input gradient 1.7-1.9 ->
// 0.4 ms; the weight gradient (weightGrad) 2.0 -> 0.4 ms.

std::atomic<int64_t> oneDnnLinearCalls{0};  // OneDnnLinear forwards (tests: the path taken)

// linearWeights is the size from which a weight's linear runs in oneDNN: a
// small layer (ResNet-18's fc, 512 x 8) is faster in the BLAS, oneDNN's
// call costing ~40 us.
constexpr int64_t linearWeights = 1 << 16;

// weightGrad is gyᵀ·x, the weight's gradient of a linear layer. Up to
// outerRows rows it is the sum of the rows' outer products (at::outer,
// at::addr_: 0.4 ms a row for fc1, where the BLAS took 2.0 ms for one row,
// 7.1 for four); the BLAS's matrix product beyond.
constexpr int64_t outerRows = 32;

at::Tensor weightGrad(const at::Tensor& gy, const at::Tensor& x) {
  int64_t n = x.size(0);
  if (n > outerRows) return gy.t().mm(x);
  at::Tensor gw = at::outer(gy[0], x[0]);
  for (int64_t i = 1; i < n; i++) gw.addr_(gy[i], x[i]);
  return gw;
}

struct OneDnnLinear : public torch::autograd::Function<OneDnnLinear> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            const at::Tensor& b) {
    oneDnnLinearCalls++;
    at::Tensor xc = x.contiguous(), wc = w.contiguous();
    c10::optional<at::Tensor> bias;
    if (b.numel() > 0) bias = b.contiguous();  // b is empty without a bias (apply takes no undefined tensor)
    ctx->save_for_backward({xc, wc});
    ctx->saved_data["bias"] = bias.has_value();
    return at::mkldnn_linear(xc.to_mkldnn(), wc, bias).to_dense();
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    at::Tensor x = saved[0], w = saved[1], gy = grads[0].contiguous();
    bool hasBias = ctx->saved_data["bias"].toBool();
    at::Tensor gx, gw, gb;
    if (ctx->needs_input_grad(0)) gx = at::mkldnn_linear_backward_input(x.sizes(), gy.to_mkldnn(), w).to_dense();
    if (ctx->needs_input_grad(1)) gw = weightGrad(gy, x);
    if (hasBias && ctx->needs_input_grad(2)) gb = gy.sum(0);
    return {gx, gw, gb};
  }
};

}  // namespace

int64_t hn_onednn_linear_calls(void) { return oneDnnLinearCalls.load(); }

char* hn_linear(hn_tensor x, hn_tensor w, hn_tensor b, hn_tensor* out) {
  HN_TRY
  const at::Tensor& t = T(x);
  const at::Tensor& wt = T(w);
  at::Tensor bias = b != nullptr ? T(b) : at::Tensor();
  bool oneDnn = at::hasMKLDNN() && at::globalContext().userEnabledMkldnn() && t.device().is_cpu() && t.dim() == 2 &&
                wt.dim() == 2 && t.scalar_type() == at::kFloat && wt.scalar_type() == at::kFloat && !t.is_mkldnn() &&
                !wt.is_mkldnn() && (!bias.defined() || bias.scalar_type() == at::kFloat) &&
                !at::autocast::is_cpu_enabled() && wt.numel() >= linearWeights && t.size(0) > 0 &&
                t.size(1) == wt.size(1);
  if (oneDnn) {
    *out = new at::Tensor(OneDnnLinear::apply(t, wt, bias.defined() ? bias : at::empty({0}, wt.options())));
  } else {
    *out = new at::Tensor(at::linear(t, wt, bias.defined() ? c10::optional<at::Tensor>(bias) : c10::nullopt));
  }
  HN_CATCH
}

namespace {

// ---- bf16 convolutions on fp32 kernels, where those are faster ----
//
// Under CPU autocast to bf16, a convolution's operands are rounded to bf16
// and oneDNN's bf16 kernel multiplies them, accumulating in fp32, into a
// bf16 output. The same numbers come from oneDNN's fp32 kernel run on the
// rounded operands (a product of two bf16 numbers is exact in fp32), its
// fp32 output rounded to bf16: only the order of the fp32 additions
// differs. Which is faster depends on the CPU: without a bf16 matrix unit
// (AMX) — AVX-512 BF16 alone, or bf16 emulated — oneDNN 2.6's bf16 kernels
// took 1.2-1.8x the time of its fp32 ones for most of the CNN's and
// ResNet-18's shapes, forward and backward, also counting the casts
// (README, "bf16 on the CPU"). The default (auto) decides by the CPU alone,
// so that a run computes the same bits every time: fp32 kernels unless the
// CPU has AMX-BF16. HANDNET_BF16_CONV (auto, bf16, fp32) or
// native.SetBF16Conv set the mode.

std::atomic<int> bfMode{-2};  // -2 unread, -1 auto, 0 bf16 kernels, 1 fp32 kernels

int bf16ConvMode() {
  int m = bfMode.load();
  if (m != -2) return m;
  const char* e = std::getenv("HANDNET_BF16_CONV");
  m = -1;
  if (e != nullptr && std::strcmp(e, "bf16") == 0) m = 0;
  if (e != nullptr && std::strcmp(e, "fp32") == 0) m = 1;
  int unread = -2;
  bfMode.compare_exchange_strong(unread, m);
  return bfMode.load();
}

// bf16ConvFP32 says whether bf16 convolutions run on fp32 kernels: as the
// mode says, and in auto unless the CPU has a bf16 matrix unit.
bool bf16ConvFP32() {
  int m = bf16ConvMode();
  if (m >= 0) return m == 1;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool amx = __builtin_cpu_supports("amx-bf16");
  return !amx;
#else
  return false;
#endif
}

// roundBF16 rounds n fp32 values to bf16's precision, kept in fp32: the
// nearest bf16, ties to even (c10::BFloat16's rounding), NaN stays NaN —
// what .to(kBFloat16).to(kFloat) gives, in one pass where those take two
// and a bf16 buffer between (a ResNet-18 step rounds every weight forward
// and every weight gradient backward: 11.2 million values each way).
#ifdef HN_AVX512_POOL
__attribute__((target("avx512f"))) void roundBF16(const float* in, float* out, int64_t n) {
  const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7fff),
                hi = _mm512_set1_epi32(int(0xffff0000u)), quiet = _mm512_set1_epi32(0x00400000);
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 k = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    __m512 v = _mm512_maskz_loadu_ps(k, in + i);
    __m512i u = _mm512_castps_si512(v);
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(u, 16), one), bias));
    r = _mm512_and_si512(r, hi);
    __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_and_si512(_mm512_or_si512(u, quiet), hi));
    _mm512_mask_storeu_ps(out + i, k, _mm512_castsi512_ps(r));
  }
}
#endif

bool roundBF16Fast(const at::Tensor& t) {
#ifdef HN_AVX512_POOL
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return avx512 && t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_non_overlapping_and_dense();
#else
  return false;
#endif
}

// roundedBF16 is t (fp32) rounded to bf16's precision, in t's layout.
at::Tensor roundedBF16(const at::Tensor& t) {
#ifdef HN_AVX512_POOL
  if (roundBF16Fast(t)) {
    at::Tensor out = at::empty_like(t);
    const float* in = t.data_ptr<float>();
    float* o = out.data_ptr<float>();
    parallelFor(t.numel(), [&](int64_t lo, int64_t hi) { roundBF16(in + lo, o + lo, hi - lo); }, 32768);
    return out;
  }
#endif
  return t.to(at::kBFloat16).to(at::kFloat);
}

// RoundBF16 is autocast's cast of an fp32 tensor to bf16 followed by the
// cast back, as one op with autograd: forward and backward each round to
// bf16's precision (the gradient of autocast's bf16 copy is bf16, then cast
// to the fp32 tensor's type).
struct RoundBF16 : public torch::autograd::Function<RoundBF16> {
  static at::Tensor forward(torch::autograd::AutogradContext*, const at::Tensor& t) { return roundedBF16(t); }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list grads) {
    return {roundedBF16(grads[0])};
  }
};

at::Tensor toBF16Float(const at::Tensor& t) {
  if (t.scalar_type() == at::kBFloat16) return t.to(at::kFloat);
  if (roundBF16Fast(t)) return RoundBF16::apply(t);
  return t.to(at::kBFloat16).to(at::kFloat);
}

// conv2dUpcast is a bf16 autocast convolution on fp32 kernels: operands
// rounded to bf16 as autocast rounds them, computed in fp32, the output
// rounded to bf16. Autograd differentiates the casts as autocast's own:
// the weight's gradient reaches the fp32 weight rounded to bf16.
at::Tensor conv2dUpcast(const at::Tensor& t, const at::Tensor& wt, const at::Tensor& bias,
                        const std::vector<int64_t>& st, const std::vector<int64_t>& pd,
                        const std::vector<int64_t>& dl, int64_t groups) {
  c10::impl::ExcludeDispatchKeyGuard noAutocast(c10::DispatchKey::AutocastCPU);
  at::Tensor b = bias.defined() ? toBF16Float(bias) : at::Tensor();
  // Outside autocast from here on: a batch-1 fp32 convolution that libtorch
  // would give the BLAS goes to oneDNN (OneDnnConv), as in fp32.
  return conv2dAsLibtorch(toBF16Float(t), toBF16Float(wt), b, st, pd, dl, groups, false).to(at::kBFloat16);
}

}  // namespace

void hn_set_bf16_conv(int mode) { bfMode.store(mode < -1 || mode > 1 ? -1 : mode); }

int hn_bf16_conv_mode(void) { return bf16ConvMode(); }

int hn_bf16_conv_fp32(void) { return bf16ConvFP32(); }

int64_t hn_onednn_conv_calls(void) { return oneDnnConvCalls.load(); }

char* hn_round_bf16(hn_tensor x, hn_tensor* out) {
  HN_TRY
  at::NoGradGuard noGrad;
  *out = new at::Tensor(toBF16Float(T(x)));
  HN_CATCH
}

char* hn_conv2d(hn_tensor x, hn_tensor w, hn_tensor b, const int64_t* stride, const int64_t* padding,
                const int64_t* dilation, int64_t groups, hn_tensor* out) {
  HN_TRY
  const at::Tensor& t = T(x);
  const at::Tensor& wt = T(w);
  at::Tensor bias = b != nullptr ? T(b) : at::Tensor();
  auto st = vec(stride, 2), pd = vec(padding, 2), dl = vec(dilation, 2);
  bool bf16Autocast = at::autocast::is_cpu_enabled() && at::autocast::get_autocast_cpu_dtype() == at::kBFloat16 &&
                      t.device().is_cpu() && t.dim() == 4 && !t.is_mkldnn() && wt.scalar_type() == at::kFloat &&
                      (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16) && at::hasMKLDNN();
  if (bf16Autocast && bf16ConvFP32()) {
    *out = new at::Tensor(conv2dUpcast(t, wt, bias, st, pd, dl, groups));
  } else {
    *out = new at::Tensor(conv2dAsLibtorch(t, wt, bias, st, pd, dl, groups, at::autocast::is_cpu_enabled()));
  }
  HN_CATCH
}

// ---- max pooling without indices ----

namespace {

#ifdef HN_AVX512_POOL
// maxPoolCL16 pools a channels-last [N, H, W, C] tensor, C a multiple of 16,
// with AVX-512: for each output pixel the window's channel vectors are
// compared 16 channels at a time. NaN wins, as in libtorch's kernel
// (v > max || isnan(v)). T is float or bf16 (uint16_t bits, compared as
// floats and written back unchanged).
// It computes output rows [r0, r1) of the N·OH.
template <typename T>
__attribute__((target("avx512f,avx512bw"))) void maxPoolCL16(const T* in, T* out, int64_t r0, int64_t r1, int64_t H,
                                                              int64_t W, int64_t C, int64_t OH, int64_t OW, int64_t kh,
                                                              int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                                                              int64_t pw) {
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t r = r0; r < r1; r++) {
    int64_t n = r / OH, oh = r % OH;
    int64_t h0 = oh * sh - ph, h1 = std::min(h0 + kh, H);
    h0 = std::max<int64_t>(h0, 0);
    for (int64_t ow = 0; ow < OW; ow++) {
      int64_t w0 = ow * sw - pw, w1 = std::min(w0 + kw, W);
      w0 = std::max<int64_t>(w0, 0);
      T* o = out + (r * OW + ow) * C;
      for (int64_t c = 0; c < C; c += 16) {
        __m512 m = ninf;
        for (int64_t h = h0; h < h1; h++) {
          const T* row = in + ((n * H + h) * W) * C + c;
          for (int64_t w = w0; w < w1; w++) {
            __m512 v;
            if constexpr (sizeof(T) == 4) {
              v = _mm512_loadu_ps(reinterpret_cast<const float*>(row + w * C));
            } else {
              __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + w * C));
              v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
            }
            __mmask16 take = _mm512_cmp_ps_mask(v, m, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            m = _mm512_mask_mov_ps(m, take, v);
          }
        }
        if constexpr (sizeof(T) == 4) {
          _mm512_storeu_ps(reinterpret_cast<float*>(o + c), m);
        } else {
          __m256i b = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(m), 16));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + c), b);
        }
      }
    }
  }
}

bool haveAVX512BW() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return ok;
}
#else
bool haveAVX512BW() { return false; }
template <typename T>
void maxPoolCL16(const T*, T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                 int64_t, int64_t, int64_t, int64_t) {}
#endif

}  // namespace

extern "C" int hn_flush_denormal(int on) {
  try {
    if (!at::globalContext().setFlushDenormal(on != 0)) return 0;
    // The team's threads were started before (and keep their own MXCSR):
    // each sets its own, in one parallel region of the team's size.
    const Omp& o = omp();
    int threads = at::get_num_threads();
    if (o.parallel != nullptr && threads > 1 && !at::in_parallel_region()) {
      int flag = on;
      o.parallel([](void* p) { at::globalContext().setFlushDenormal(*static_cast<int*>(p) != 0); }, &flag,
                 static_cast<unsigned>(threads), 0);
    }
    return 1;
  } catch (...) {
    return 0;
  }
}

namespace {

// MaxPoolViaCL is max_pool2d_with_indices of an NCHW tensor computed in
// libtorch's channels-last kernel, with autograd: libtorch 1.13's NCHW
// kernel is scalar (ResNet-18's max-pool at batch 16 in training: 30 ms,
// 11 ms this way with both layout copies; the CNN's three at batch 16
// 29 -> 11 ms). Both kernels scan a window in the same order and keep the
// first maximum (or NaN), so values and indices are the same bits; the
// backward is libtorch's NCHW one with those indices.
struct MaxPoolViaCL : public torch::autograd::Function<MaxPoolViaCL> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, std::vector<int64_t> k,
                            std::vector<int64_t> st, std::vector<int64_t> pd) {
    auto r = at::max_pool2d_with_indices(x.contiguous(at::MemoryFormat::ChannelsLast), k, st, pd, {1, 1}, false);
    at::Tensor y = std::get<0>(r).contiguous(), idx = std::get<1>(r).contiguous();
    ctx->save_for_backward({x, idx});
    ctx->saved_data["k"] = k;
    ctx->saved_data["st"] = st;
    ctx->saved_data["pd"] = pd;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    at::Tensor gx = at::max_pool2d_with_indices_backward(
        grads[0].contiguous(), saved[0], ctx->saved_data["k"].toIntVector(), ctx->saved_data["st"].toIntVector(),
        ctx->saved_data["pd"].toIntVector(), {1, 1}, false, saved[1]);
    return {gx, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// maxPoolAsLibtorch is libtorch's max_pool2d of t (with autograd when grad
// says), an NCHW float or bf16 CPU tensor through the channels-last kernel.
at::Tensor maxPoolAsLibtorch(const at::Tensor& t, const std::vector<int64_t>& k, const std::vector<int64_t>& st,
                             const std::vector<int64_t>& pd, bool grad) {
  bool viaCL = t.device().is_cpu() && t.dim() == 4 && t.numel() > 0 && !t.is_mkldnn() &&
               (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16) && t.is_contiguous() &&
               !t.is_contiguous(at::MemoryFormat::ChannelsLast);
  if (!viaCL) return at::max_pool2d(t, k, st, pd);
  if (grad) return MaxPoolViaCL::apply(t, k, st, pd);
  return at::max_pool2d(t.contiguous(at::MemoryFormat::ChannelsLast), k, st, pd).contiguous();
}

}  // namespace

extern "C" char* hn_max_pool2d(hn_tensor x, const int64_t* kernel, const int64_t* stride, const int64_t* padding,
                               hn_tensor* out) {
  HN_TRY
  const at::Tensor& t = T(x);
  auto k = vec(kernel, 2), st = vec(stride, 2), pd = vec(padding, 2);
  bool fast = haveAVX512BW() && t.device().is_cpu() && t.dim() == 4 && t.size(1) % 16 == 0 && t.numel() > 0 &&
              (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16) &&
              t.is_contiguous(at::MemoryFormat::ChannelsLast) && k[0] > 0 && k[1] > 0 && st[0] > 0 && st[1] > 0 &&
              pd[0] >= 0 && pd[1] >= 0 && 2 * pd[0] <= k[0] && 2 * pd[1] <= k[1] && t.size(2) + 2 * pd[0] >= k[0] &&
              t.size(3) + 2 * pd[1] >= k[1];
  bool grad = at::GradMode::is_enabled() && t.requires_grad();
  if (grad || !fast) {
    *out = new at::Tensor(maxPoolAsLibtorch(t, k, st, pd, grad));
    return nullptr;
  }
  int64_t N = t.size(0), C = t.size(1), H = t.size(2), W = t.size(3);
  int64_t OH = (H + 2 * pd[0] - k[0]) / st[0] + 1, OW = (W + 2 * pd[1] - k[1]) / st[1] + 1;
  at::Tensor y = at::empty({N, C, OH, OW}, t.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (t.scalar_type() == at::kFloat) {
    const float* src = t.data_ptr<float>();
    float* dst = y.data_ptr<float>();
    parallelFor(N * OH, [&](int64_t r0, int64_t r1) {
      maxPoolCL16(src, dst, r0, r1, H, W, C, OH, OW, k[0], k[1], st[0], st[1], pd[0], pd[1]);
    });
  } else {
    auto src = reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>());
    auto dst = reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>());
    parallelFor(N * OH, [&](int64_t r0, int64_t r1) {
      maxPoolCL16(src, dst, r0, r1, H, W, C, OH, OW, k[0], k[1], st[0], st[1], pd[0], pd[1]);
    });
  }
  *out = new at::Tensor(std::move(y));
  HN_CATCH
}
