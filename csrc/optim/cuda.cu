// Optimizer family, CUDA kernels (float32, float16, bfloat16; arithmetic in float32): a multi-tensor
// apply of the rules in rules.h, and the gradient norm of clip_grad_norm_.
//
// Why it is written this way. A step is memory bound and a model has tens to thousands of tensors,
// many of them tiny (biases, norms): one launch per tensor (torch's for-loop) spends more time in
// launches than in memory traffic. So each launch takes a batch of tensors by value in its kernel
// parameters — their addresses, sizes and per-tensor scalars, and a chunk table: tensor t owns the
// chunks [chunk_begin[t], chunk_begin[t+1]) of kChunkElements elements — and each block handles
// chunks (grid-stride), finding its tensor by binary search over the table. The batch is sized to
// the 4 KiB kernel-parameter limit: 68 tensors per launch for Adam, 95 for plain SGD, so a typical
// group is one launch (the idea of apex's multi_tensor_apply and torch's _foreach kernels).
// Each thread keeps kIlp elements in flight (independent loads before any store) to cover DRAM latency.
//
// Gradient norms are deterministic: each (batch, block) writes one float partial to the caller's
// workspace (a fixed number of blocks per batch, chunks assigned round-robin), and one block adds
// the partials in a fixed order and takes the root. clip_grads_by_norm reads the norm on the device
// and returns before touching memory when the coefficient is 1, so clipping needs no host sync.
#include <array>
#include <climits>
#include <cstdint>
#include <vector>

#include "core/check.h"
#include "core/cuda_utils.cuh"
#include "optim/optim.h"
#include "optim/rules.h"

namespace replearn::optim {

namespace {

constexpr int kThreads = 256;
constexpr int kIlp = 4;
constexpr int64_t kChunkElements = 16 * kThreads * kIlp;  // 16384: 16 passes of a block per chunk
constexpr int kNormBlocksPerBatch = 320;                   // partials per batch: ~2.5 blocks per SM on an H100
constexpr int kParamBudgetBytes = 4096 - 256;              // kernel parameters, less the rule's members

// A batch of tensors for one launch. Sized so the whole struct fits the parameter budget.
template <int L>
struct Batch {
  static constexpr int kTensors = (kParamBudgetBytes - 16) / (8 * L + 8 + 12 + 4);
  void* ptr[L][kTensors];       // ptr[k][t]: tensor t of list k
  int64_t numel[kTensors];
  float scalar[kTensors][3];    // per-tensor scalars (TensorScalars, in float)
  int chunk_begin[kTensors + 1];
  int count;
};
static_assert(sizeof(Batch<5>) <= kParamBudgetBytes, "batch exceeds the kernel parameter budget");
static_assert(sizeof(Batch<1>) <= kParamBudgetBytes, "batch exceeds the kernel parameter budget");

// The tensor that owns `chunk`: the last t with chunk_begin[t] <= chunk.
template <int L>
__device__ __forceinline__ int owner(const Batch<L>& batch, int chunk) {
  int lo = 0, hi = batch.count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (batch.chunk_begin[mid] <= chunk) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

struct ChunkRange {
  int tensor;
  int64_t begin, end;  // elements of that tensor
};

template <int L>
__device__ __forceinline__ ChunkRange chunk_range(const Batch<L>& batch, int chunk) {
  const int t = owner(batch, chunk);
  const int64_t begin = static_cast<int64_t>(chunk - batch.chunk_begin[t]) * kChunkElements;
  const int64_t end = begin + kChunkElements < batch.numel[t] ? begin + kChunkElements : batch.numel[t];
  return {t, begin, end};
}

// Every chunk of the batch through `rule`, kIlp elements per thread in flight.
template <class T, class Rule>
__device__ __forceinline__ void apply_chunks(const Batch<Rule::kLists>& batch, const Rule& rule) {
  constexpr int L = Rule::kLists;
  const int chunks = batch.chunk_begin[batch.count];
  for (int chunk = blockIdx.x; chunk < chunks; chunk += gridDim.x) {
    const ChunkRange r = chunk_range(batch, chunk);
    T* ptr[L];
#pragma unroll
    for (int k = 0; k < L; ++k) ptr[k] = static_cast<T*>(batch.ptr[k][r.tensor]);
    const float* per_tensor = batch.scalar[r.tensor];
    const int64_t stride = static_cast<int64_t>(blockDim.x) * kIlp;
    for (int64_t base = r.begin + threadIdx.x; base < r.end; base += stride) {
      float v[kIlp][L];
#pragma unroll
      for (int j = 0; j < kIlp; ++j) {
        const int64_t i = base + static_cast<int64_t>(j) * blockDim.x;
#pragma unroll
        for (int k = 0; k < L; ++k) v[j][k] = i < r.end ? to_float(ptr[k][i]) : 0.f;
      }
#pragma unroll
      for (int j = 0; j < kIlp; ++j) rule(v[j], per_tensor);
#pragma unroll
      for (int j = 0; j < kIlp; ++j) {
        const int64_t i = base + static_cast<int64_t>(j) * blockDim.x;
        if (i >= r.end) continue;
#pragma unroll
        for (int k = 0; k < L; ++k)
          if (Rule::kWrites >> k & 1u) ptr[k][i] = from_float<T>(v[j][k]);
      }
    }
  }
}

template <class T, class Rule>
__global__ void __launch_bounds__(kThreads) multi_tensor_kernel(Batch<Rule::kLists> batch, Rule rule) {
  apply_chunks<T>(batch, rule);
}

// g ← g·c, c from the norm on the device; blocks return at once when c ≥ 1 (NaN does not).
template <class T>
__global__ void __launch_bounds__(kThreads) clip_by_norm_kernel(Batch<1> batch, const float* norm, float max_norm) {
  const float coefficient = clip_coefficient(*norm, max_norm);
  if (coefficient >= 1.f) return;
  apply_chunks<T>(batch, ScaleRule<float>{coefficient});
}

// ---------------------------------------------------------------------------------- norm kernels

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// The block's Σ (or max, NaN-propagating); every thread gets it. `scratch`: 32 floats of shared memory.
__device__ __forceinline__ float block_reduce(float v, bool use_max, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (use_max) {
    v = warp_max(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = warp_max(lane < warps ? scratch[lane] : 0.f);
    __syncthreads();
    return v;
  }
  v = block_sum(v, scratch);
  __syncthreads();
  return v;
}

// partials[b] for virtual block b of this batch: Σ|g|^p (or max |g|) over chunks b, b + blocks, ...
template <class T>
__global__ void __launch_bounds__(kThreads)
    norm_partials_kernel(Batch<1> batch, NormKind kind, float p, int blocks, float* partials) {
  __shared__ float scratch[32];
  const int chunks = batch.chunk_begin[batch.count];
  for (int b = blockIdx.x; b < blocks; b += gridDim.x) {  // uniform across the block: barriers are safe
    float acc = 0.f;
    for (int chunk = b; chunk < chunks; chunk += blocks) {
      const ChunkRange r = chunk_range(batch, chunk);
      const T* g = static_cast<const T*>(batch.ptr[0][r.tensor]);
      for (int64_t i = r.begin + threadIdx.x; i < r.end; i += blockDim.x) {
        const float a = fabsf(to_float(g[i]));
        acc = kind == NormKind::Two ? acc + a * a : kind == NormKind::Inf ? nan_max(acc, a) : acc + powf(a, p);
      }
    }
    acc = block_reduce(acc, kind == NormKind::Inf, scratch);
    if (threadIdx.x == 0) partials[b] = acc;
  }
}

// One block: total = combine(partials[0..count)) in a fixed order, then the root.
__global__ void __launch_bounds__(1024) norm_finish_kernel(const float* partials, int count, NormKind kind, float p,
                                                           float* total_norm) {
  __shared__ float scratch[32];
  float acc = 0.f;
  for (int i = threadIdx.x; i < count; i += blockDim.x)
    acc = kind == NormKind::Inf ? nan_max(acc, partials[i]) : acc + partials[i];
  acc = block_reduce(acc, kind == NormKind::Inf, scratch);
  if (threadIdx.x == 0)
    *total_norm = kind == NormKind::Two ? sqrtf(acc) : kind == NormKind::Inf ? acc : powf(acc, 1.f / p);
}

// ---------------------------------------------------------------------------------- host side

// Splits the group into launches: tensors in order, a new batch when the current one is full or its
// chunk count would overflow an int. Empty tensors are left out. `visit(batch)` is called per batch.
template <int L, class Visit>
void for_each_batch(const std::array<const TensorList*, L>& lists, const std::vector<TensorScalars>& scalars,
                    const Visit& visit) {
  Batch<L> batch{};
  auto flush = [&] {
    if (batch.count > 0) visit(batch);
    batch.count = 0;
  };
  const TensorList& leading = *lists[0];
  for (size_t t = 0; t < leading.size(); ++t) {
    const int64_t n = leading[t].numel();
    if (n == 0) continue;
    const int64_t chunks = (n + kChunkElements - 1) / kChunkElements;
    if (batch.count == Batch<L>::kTensors || batch.chunk_begin[batch.count] + chunks > INT_MAX) flush();
    const int slot = batch.count;
    for (int k = 0; k < L; ++k) batch.ptr[k][slot] = (*lists[k])[t].data;
    batch.numel[slot] = n;
    for (int j = 0; j < 3; ++j) batch.scalar[slot][j] = scalars.empty() ? 0.f : static_cast<float>(scalars[t].value[j]);
    batch.chunk_begin[slot + 1] = batch.chunk_begin[slot] + static_cast<int>(chunks);
    batch.count = slot + 1;
  }
  flush();
}

template <class T, class Rule>
void multi_tensor_apply(const std::array<const TensorList*, Rule::kLists>& lists,
                        const std::vector<TensorScalars>& scalars, const Rule& rule, cudaStream_t stream) {
  for_each_batch<Rule::kLists>(lists, scalars, [&](const Batch<Rule::kLists>& batch) {
    multi_tensor_kernel<T, Rule><<<batch.chunk_begin[batch.count], kThreads, 0, stream>>>(batch, rule);
    REPLEARN_CUDA_LAUNCH_CHECK();
  });
}

// Partials per batch: one per block, at most kNormBlocksPerBatch.
std::vector<int> norm_blocks_per_batch(const TensorList& grads) {
  std::vector<int> blocks;
  for_each_batch<1>(std::array{&grads}, {}, [&](const Batch<1>& batch) {
    blocks.push_back(batch.chunk_begin[batch.count] < kNormBlocksPerBatch ? batch.chunk_begin[batch.count]
                                                                         : kNormBlocksPerBatch);
  });
  return blocks;
}

int64_t norm_partial_count(const TensorList& grads) {
  int64_t total = 0;
  for (int b : norm_blocks_per_batch(grads)) total += b;
  return total;
}

void check_norm_workspace(const TensorView& workspace, int64_t bytes, const TensorList& grads) {
  if (bytes == 0) return;
  REPLEARN_CHECK(workspace.dtype == DType::UInt8, Type, "grad_norm: argument 'workspace' expected uint8 but got ",
                 dtype_name(workspace.dtype));
  REPLEARN_CHECK(workspace.device == grads[0].device, Value, "grad_norm: argument 'workspace' expected to be on ",
                 device_name(grads[0].device), " like 'grads[0]' but got ", device_name(workspace.device));
  REPLEARN_CHECK(workspace.is_contiguous(), Value, "grad_norm: argument 'workspace' expected contiguous strides");
  REPLEARN_CHECK(workspace.numel() >= bytes, Value, "grad_norm: argument 'workspace' expected at least ", bytes,
                 " bytes but got ", workspace.numel());
}

template <class F>
void dispatch(const TensorList& tensors, const F& f) {
  if (!tensors.empty()) dispatch_cuda_floating(tensors[0].dtype, f);
}

}  // namespace

// ----------------------------------------------------------------------------------- entry points

template <>
void sgd_step<DeviceType::CUDA>(const TensorList& params, const TensorList& grads, const TensorList& momentum_buffers,
                                const std::vector<bool>& buffer_is_new, double lr, double momentum, double dampening,
                                double weight_decay, bool nesterov, bool maximize, std::uintptr_t stream) {
  check_sgd(DeviceType::CUDA, params, grads, momentum_buffers, buffer_is_new, lr, momentum, dampening, weight_decay,
            nesterov);
  const float sign = maximize ? -1.f : 1.f;
  dispatch(params, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (momentum != 0) {
      const SgdRule<float, true> rule{float(lr), float(momentum), float(1 - dampening), float(weight_decay), sign,
                                      nesterov};
      multi_tensor_apply<T>(std::array{&params, &grads, &momentum_buffers}, sgd_scalars(buffer_is_new), rule,
                            as_stream(stream));
    } else {
      const SgdRule<float, false> rule{float(lr), 0.f, 1.f, float(weight_decay), sign, nesterov};
      multi_tensor_apply<T>(std::array{&params, &grads}, {}, rule, as_stream(stream));
    }
  });
}

template <>
void adagrad_step<DeviceType::CUDA>(const TensorList& params, const TensorList& grads, const TensorList& state_sums,
                                    const TensorList& steps, double lr, double lr_decay, double weight_decay,
                                    double eps, bool maximize, std::uintptr_t stream) {
  check_adagrad(DeviceType::CUDA, params, grads, state_sums, steps, lr, lr_decay, weight_decay, eps);
  const auto scalars = adagrad_scalars(increment_steps(steps), lr, lr_decay);
  dispatch(params, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const AdagradRule<float> rule{float(eps), float(weight_decay), maximize ? -1.f : 1.f};
    multi_tensor_apply<T>(std::array{&params, &grads, &state_sums}, scalars, rule, as_stream(stream));
  });
}

template <>
void rmsprop_step<DeviceType::CUDA>(const TensorList& params, const TensorList& grads, const TensorList& square_avgs,
                                    const TensorList& grad_avgs, const TensorList& momentum_buffers,
                                    const TensorList& steps, double lr, double alpha, double eps, double weight_decay,
                                    double momentum, bool centered, bool maximize, std::uintptr_t stream) {
  check_rmsprop(DeviceType::CUDA, params, grads, square_avgs, grad_avgs, momentum_buffers, steps, lr, alpha, eps,
                weight_decay, momentum, centered);
  increment_steps(steps);
  dispatch(params, [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto run = [&](auto centered_tag, auto momentum_tag, auto lists) {
      const RmspropRule<float, decltype(centered_tag)::value, decltype(momentum_tag)::value> rule{
          float(lr), float(alpha), float(1 - alpha), float(eps), float(weight_decay), float(momentum),
          maximize ? -1.f : 1.f};
      multi_tensor_apply<T>(lists, {}, rule, as_stream(stream));
    };
    with_rmsprop_variant(centered, momentum > 0, params, grads, square_avgs, grad_avgs, momentum_buffers, run);
  });
}

template <>
void adam_step<DeviceType::CUDA>(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
                                 const TensorList& exp_avg_sqs, const TensorList& max_exp_avg_sqs,
                                 const TensorList& steps, double lr, double beta1, double beta2, double eps,
                                 double weight_decay, bool amsgrad, bool decoupled_weight_decay, bool maximize,
                                 std::uintptr_t stream) {
  check_adam("adam_step", DeviceType::CUDA, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1,
             beta2, eps, weight_decay, amsgrad);
  const auto scalars = adam_scalars(increment_steps(steps), lr, beta1, beta2);
  const bool decoupled = decoupled_weight_decay && weight_decay != 0;
  const float sign = maximize ? -1.f : 1.f;
  const float l2 = decoupled ? 0.f : float(weight_decay);
  const float param_decay = decoupled ? float(1 - lr * weight_decay) : 1.f;
  dispatch(params, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (amsgrad) {
      const AdamRule<float, true> rule{float(1 - beta1), float(beta2), float(1 - beta2), float(eps), sign, l2,
                                       param_decay};
      multi_tensor_apply<T>(std::array{&params, &grads, &exp_avgs, &exp_avg_sqs, &max_exp_avg_sqs}, scalars, rule,
                            as_stream(stream));
    } else {
      const AdamRule<float, false> rule{float(1 - beta1), float(beta2), float(1 - beta2), float(eps), sign, l2,
                                        param_decay};
      multi_tensor_apply<T>(std::array{&params, &grads, &exp_avgs, &exp_avg_sqs}, scalars, rule, as_stream(stream));
    }
  });
}

template <>
void adabound_step<DeviceType::CUDA>(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
                                     const TensorList& exp_avg_sqs, const TensorList& max_exp_avg_sqs,
                                     const TensorList& steps, double lr, double beta1, double beta2, double final_lr,
                                     double base_lr, double gamma, double eps, double weight_decay, bool amsbound,
                                     bool maximize, std::uintptr_t stream) {
  check_adam("adabound_step", DeviceType::CUDA, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr,
             beta1, beta2, eps, weight_decay, amsbound);
  check_adabound_bounds(final_lr, base_lr, gamma);
  const auto scalars = adabound_scalars(increment_steps(steps), lr, beta1, beta2, final_lr, base_lr, gamma);
  const float sign = maximize ? -1.f : 1.f;
  dispatch(params, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (amsbound) {
      const AdaboundRule<float, true> rule{float(beta1), float(1 - beta1), float(beta2), float(1 - beta2),
                                           float(eps),   float(weight_decay), sign};
      multi_tensor_apply<T>(std::array{&params, &grads, &exp_avgs, &exp_avg_sqs, &max_exp_avg_sqs}, scalars, rule,
                            as_stream(stream));
    } else {
      const AdaboundRule<float, false> rule{float(beta1), float(1 - beta1), float(beta2), float(1 - beta2),
                                            float(eps),   float(weight_decay), sign};
      multi_tensor_apply<T>(std::array{&params, &grads, &exp_avgs, &exp_avg_sqs}, scalars, rule, as_stream(stream));
    }
  });
}

template <>
int64_t grad_norm_workspace_size<DeviceType::CUDA>(const TensorList& grads) {
  return norm_partial_count(grads) * static_cast<int64_t>(sizeof(float));
}

template <>
void grad_norm<DeviceType::CUDA>(const TensorList& grads, double norm_type, const TensorView& total_norm,
                                 const TensorView& workspace, std::uintptr_t stream) {
  const NormKind kind = check_grad_norm(DeviceType::CUDA, grads, norm_type, total_norm);
  const int64_t partial_count = norm_partial_count(grads);
  if (!grads.empty()) check_norm_workspace(workspace, partial_count * static_cast<int64_t>(sizeof(float)), grads);
  float* partials = partial_count > 0 ? workspace.data_as<float>() : nullptr;
  const float p = static_cast<float>(norm_type);
  dispatch(grads, [&](auto tag) {
    using T = typename decltype(tag)::type;
    int64_t offset = 0;
    for_each_batch<1>(std::array{&grads}, {}, [&](const Batch<1>& batch) {
      const int chunks = batch.chunk_begin[batch.count];
      const int blocks = chunks < kNormBlocksPerBatch ? chunks : kNormBlocksPerBatch;
      norm_partials_kernel<T><<<blocks, kThreads, 0, as_stream(stream)>>>(batch, kind, p, blocks, partials + offset);
      REPLEARN_CUDA_LAUNCH_CHECK();
      offset += blocks;
    });
  });
  norm_finish_kernel<<<1, 1024, 0, as_stream(stream)>>>(partials, static_cast<int>(partial_count), kind, p,
                                                         total_norm.data_as<float>());
  REPLEARN_CUDA_LAUNCH_CHECK();
}

template <>
void clip_grads_by_norm<DeviceType::CUDA>(const TensorList& grads, const TensorView& total_norm, double max_norm,
                                          std::uintptr_t stream) {
  check_clip_by_norm(DeviceType::CUDA, grads, total_norm, max_norm);
  dispatch(grads, [&](auto tag) {
    using T = typename decltype(tag)::type;
    for_each_batch<1>(std::array{&grads}, {}, [&](const Batch<1>& batch) {
      clip_by_norm_kernel<T><<<batch.chunk_begin[batch.count], kThreads, 0, as_stream(stream)>>>(
          batch, total_norm.data_as<float>(), static_cast<float>(max_norm));
      REPLEARN_CUDA_LAUNCH_CHECK();
    });
  });
}

template <>
void clip_grads_by_value<DeviceType::CUDA>(const TensorList& grads, double clip_value, std::uintptr_t stream) {
  check_clip_by_value(DeviceType::CUDA, grads, clip_value);
  dispatch(grads, [&](auto tag) {
    using T = typename decltype(tag)::type;
    multi_tensor_apply<T>(std::array{&grads}, {}, ClipValueRule<float>{static_cast<float>(clip_value)},
                          as_stream(stream));
  });
}

}  // namespace replearn::optim
