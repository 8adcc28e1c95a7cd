// handnet's native layer: the libtorch features that gotch's generated ops do
// not reach (c10d process groups and stores; later CUDA graphs, memory
// formats, autocast dtypes and multi-tensor kernels), behind a small C API.
//
// Every function that can fail returns NULL on success or an error message
// allocated with malloc (the caller frees it); no C++ exception crosses this
// boundary. Tensors are gotch's handles: pointers to at::Tensor.
#ifndef HANDNET_NATIVE_H
#define HANDNET_NATIVE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef void* hn_tensor; // at::Tensor*, as gotch's ctensor
typedef struct hn_store hn_store;
typedef struct hn_group hn_group;

// hn_features returns a malloc'd JSON object naming the features compiled
// into this build and the libtorch version it was compiled against.
char* hn_features(void);

// Stores (c10d::TCPStore): rendezvous and small key/value exchange. Every
// key, the process group's included, is put under prefix (c10d::PrefixStore)
// when prefix is not empty.
char* hn_store_new(const char* host, int port, int is_server, int world_size, int64_t timeout_ms, const char* prefix,
                   hn_store** out);
char* hn_store_set(hn_store* s, const char* key, const uint8_t* val, size_t n);
// hn_store_get waits up to the store's timeout for key; *val is malloc'd.
char* hn_store_get(hn_store* s, const char* key, uint8_t** val, size_t* n);
char* hn_store_add(hn_store* s, const char* key, int64_t delta, int64_t* out);
char* hn_store_check(hn_store* s, const char* key, int* present);
void hn_store_free(hn_store* s);

// Process groups (c10d::ProcessGroupGloo / ProcessGroupNCCL). backend is
// "gloo" or "nccl"; device is -1 for the CPU or a CUDA index. Gloo binds to
// the interfaces in GLOO_SOCKET_IFNAME, else to gloo_host when not empty,
// else to the address this host's name resolves to.
char* hn_group_new(const char* backend, hn_store* s, int rank, int size, int device, int64_t timeout_ms,
                   const char* gloo_host, hn_group** out);
// hn_group_allreduce_mean averages the tensors in place over the ranks:
// consecutive tensors of one dtype and device are flattened into buckets of
// at most bucket_bytes (a tensor larger than that is a bucket of its own),
// one all-reduce per bucket.
char* hn_group_allreduce_mean(hn_group* g, hn_tensor* ts, int n, int64_t bucket_bytes);
// hn_group_broadcast copies root's tensors into every rank's, bucketed alike.
char* hn_group_broadcast(hn_group* g, hn_tensor* ts, int n, int root, int64_t bucket_bytes);
// hn_group_allreduce_sum_f64 sums n host doubles over the ranks, in place.
char* hn_group_allreduce_sum_f64(hn_group* g, double* vals, int n);
void hn_group_free(hn_group* g);

// hn_sgd_step is torch.optim.SGD's update (dampening 0, no Nesterov) over n
// parameters: d = grad + weight_decay·param; buf = d the first time (a new
// tensor written into bufs[i], which is NULL then), else buf·momentum + d;
// param −= lr·buf (or lr·d without momentum); then the gradients are zeroed.
// Parameters whose grad is undefined are skipped. fused = 1 runs it as a few
// multi-tensor (_foreach_) kernels, fused = 0 as kernels per parameter; on
// the CPU both give the same bits.
char* hn_sgd_step(hn_tensor* params, hn_tensor* grads, hn_tensor* bufs, int n, double lr, double momentum,
                  double weight_decay, int fused);

// Autocast (torch.autocast): hn_autocast_enter turns mixed precision on for
// this thread's ops on the CPU (cuda = 0) or CUDA (cuda = 1), with dtype an
// at::ScalarType code (5 Half, 15 BFloat16), and returns the previous state
// for hn_autocast_exit, which restores it and clears the cast cache when the
// outermost region ends. gotch can only switch autocast on, not choose its
// dtype.
char* hn_autocast_enter(int cuda, int dtype, int* prev_enabled, int* prev_dtype);
char* hn_autocast_exit(int cuda, int prev_enabled, int prev_dtype);

// hn_set_channels_last re-lays t's data out in place (set_data): channels
// last (NHWC in memory) when on, else contiguous. For 4-D parameters, whose
// handles (the model's, the optimizer's) all see the new layout.
char* hn_set_channels_last(hn_tensor t, int on);
// hn_channels_last returns t in dtype (an at::ScalarType code), laid out
// channels last, in one copy (t itself, shared, when it already is both);
// *out is a new handle.
char* hn_channels_last(hn_tensor t, int dtype, hn_tensor* out);
// hn_is_channels_last says whether t is laid out channels last.
int hn_is_channels_last(hn_tensor t);

// hn_unscale multiplies the defined tensors among ts by inv_scale in place
// (one multi-tensor kernel) and sets *found_inf when any holds a NaN or an
// infinity afterwards: mixed-precision loss scaling's check (GradScaler).
char* hn_unscale(hn_tensor* ts, int n, double inv_scale, int* found_inf);

// hn_cuda_mem_info reports the current CUDA device's free and total bytes
// (an error on builds without CUDA).
char* hn_cuda_mem_info(int device, int64_t* free_bytes, int64_t* total_bytes);

// hn_release_memory gives the C heap's free memory back to the system
// (glibc's malloc_trim): after a large batch, freed activations otherwise
// stay resident as the allocator's high-water mark.
void hn_release_memory(void);

// hn_malloc_tuning says whether handnet set glibc malloc's mmap and trim
// thresholds when it loaded (1), or left them to the user's settings (0).
int hn_malloc_tuning(void);

// hn_conv2d is conv2d(x, w, b, stride, padding, dilation, groups), with
// autograd, as at::conv2d computes it — except where libtorch 1.13's choice
// of kernel would take the im2col + BLAS path ("slow_conv2d") on the CPU in
// fp32 without autocast: a batch of 1 whose input has at most 20,480
// elements and a kernel of at most 3 in a side (ResNet-18's layer4 at
// 128x170), or a 1x1 kernel on one thread. With a reference BLAS (Debian's)
// that path takes ~40 ms where oneDNN takes ~3 ms, and its backward as long
// again: there the forward runs oneDNN's convolution (at::mkldnn_convolution)
// and the backward libtorch's convolution_backward on the batch with one
// image of zeros added, which makes libtorch pick oneDNN too (the zeros add
// nothing to the weight's and bias's gradients). Under CPU autocast to
// bf16 it may run on fp32 kernels instead (hn_set_bf16_conv). b may be NULL.
char* hn_conv2d(hn_tensor x, hn_tensor w, hn_tensor b, const int64_t* stride, const int64_t* padding,
                const int64_t* dilation, int64_t groups, hn_tensor* out);

// hn_set_bf16_conv sets how hn_conv2d runs a convolution under CPU
// autocast to bf16: on oneDNN's bf16 kernel (0, as PyTorch) or on its fp32
// kernel with the bf16-rounded operands, the output rounded to bf16 (1);
// -1 (auto): fp32 kernels unless the CPU has AMX-BF16. Unset, the
// HANDNET_BF16_CONV environment variable (auto, bf16, fp32) decides, else
// -1.
void hn_set_bf16_conv(int mode);

// hn_bf16_conv_mode returns the mode hn_set_bf16_conv describes.
int hn_bf16_conv_mode(void);

// hn_bf16_conv_fp32 says whether bf16 convolutions run on fp32 kernels now
// (the mode, and in auto this CPU).
int hn_bf16_conv_fp32(void);

// hn_parallel_threads splits n items among libtorch's intra-op threads as
// the native layer's own kernels do (SGD, bf16 rounding, max-pooling) and
// returns how many threads ran a part (for tests).
int hn_parallel_threads(int64_t n);

// hn_round_bf16 is x rounded to bf16's precision as the bf16 convolutions
// on fp32 kernels round their operands: x.to(bf16).to(float32) (for tests).
char* hn_round_bf16(hn_tensor x, hn_tensor* out);

// hn_onednn_conv_calls counts the convolutions hn_conv2d has sent to
// oneDNN instead of libtorch's BLAS path (for tests).
int64_t hn_onednn_conv_calls(void);

// hn_linear is linear(x, w, b) = x·wᵀ + b, with autograd, as at::linear
// computes it — except for a large fp32 layer on the CPU without autocast
// (a weight of 65,536 elements or more, x 2-D), which libtorch sends to the
// BLAS: there the forward and the input's gradient run oneDNN's inner
// product (at::mkldnn_linear), and the weight's gradient of a batch of 1 is
// an outer product. b may be NULL.
char* hn_linear(hn_tensor x, hn_tensor w, hn_tensor b, hn_tensor* out);

// hn_onednn_linear_calls counts the layers hn_linear has run in oneDNN
// (for tests).
int64_t hn_onednn_linear_calls(void);

// hn_flush_denormal turns flushing of denormal floats to zero (FTZ and DAZ,
// as torch.set_flush_denormal) on (on=1) or off for the calling thread and
// every thread of its OpenMP team, which keep their own float modes. It
// returns 1 when the CPU has the modes, 0 when not (nothing changed).
int hn_flush_denormal(int on);

// Inference mode (c10::InferenceMode): hn_inference_mode_enter turns it on
// for the calling thread and returns its guard; hn_inference_mode_exit, on
// the same thread and in reverse order, restores the mode before. Tensors
// made inside are inference tensors: no autograd records them, and they can
// never take part in a backward pass or be updated in place outside.
char* hn_inference_mode_enter(void** guard);
void hn_inference_mode_exit(void* guard);

// Prepacked convolutions (oneDNN, libtorch's mkldnn_prepacked ops on the
// CPU): hn_conv_prepack lays out weight w (and bias b, may be NULL) once in
// the blocked format oneDNN's kernels want for inputs shaped like
// input_size (N, C, H, W; other shapes run too), with a ReLU fused after
// the convolution when relu is 1; the layout suits channels-last inputs
// when channels_last is 1, NCHW ones when 0 (an input of the other kind
// runs too, reordering the weights at every call). hn_conv_run applies it
// to x (NCHW or channels last; the output follows x's layout). An error
// names a libtorch without the ops (built without oneDNN).
typedef struct hn_conv hn_conv;
char* hn_conv_prepack(hn_tensor w, hn_tensor b, const int64_t* stride, const int64_t* padding, const int64_t* dilation,
                      int64_t groups, const int64_t* input_size, int relu, int channels_last, hn_conv** out);
char* hn_conv_run(hn_conv* c, hn_tensor x, hn_tensor* out);
void hn_conv_free(hn_conv* c);

// hn_max_pool2d is max_pool2d (no dilation, floor mode) of x, with
// autograd when x requires a gradient (and grad mode is on): without one,
// for a channels-last float or bf16 x with channels a multiple of 16, on a
// CPU with AVX-512, one pass without the indices that libtorch's CPU kernel
// always computes (and writes, 8 bytes per output); for an NCHW float or
// bf16 CPU x, libtorch's channels-last kernel between two layout copies
// (its NCHW kernel is scalar), the same values and indices; otherwise
// libtorch's. The output has x's layout.
char* hn_max_pool2d(hn_tensor x, const int64_t* kernel, const int64_t* stride, const int64_t* padding, hn_tensor* out);

#ifdef __cplusplus
}
#endif
#endif
