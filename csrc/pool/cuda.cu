// Pooling family, CUDA kernels (float32, float16, bfloat16; arithmetic in float32).
//
//   max      y[o] = max over o's taps (windows.h), compared in float with `v > m || isnan(v)` in row-major
//            tap order from m = −∞: ties keep the first max and NaN wins, torch's convention, so the
//            int64 indices (h·W + w in the plane) match torch's.
//   average  Σ taps / divisor;  adaptive: mean over [⌊o·in/out⌋, ⌈(o+1)·in/out⌉) per axis.
//
// Why it is written this way. Pooling is memory bound and its windows are small, so forward runs one
// thread per output, reading its taps (neighbouring threads read neighbouring columns: coalesced up to
// the stride). Backward runs one thread per input and gathers from the outputs that read it
// (Axis::readers): every gradient is written once, by one thread, with a sum in a fixed order — no
// atomics, so results are bit-identical run to run (torch's CUDA max-pool backward gathers the same
// way; its average-pool backward too). Max backward gathers grad_y[o] where indices[o] names this
// input, so it needs no other record of the forward. Global average pooling (adaptive, 1×1 output)
// reduces each plane with one warp (contiguous, coalesced reads); its backward is the generic gather.
// Threads walk a grid-stride loop, so any size runs on a bounded grid.
#include <algorithm>
#include <climits>
#include <cstdint>

#include "core/check.h"
#include "core/cuda_utils.cuh"
#include "pool/pool.h"

namespace replearn::pool {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride beyond this: ~8000 blocks per SM is plenty
constexpr int kWarpsPerBlock = kThreads / 32;

int blocks_for(int64_t work_items, int64_t per_block) {
  return static_cast<int>(std::max<int64_t>(1, std::min(kMaxBlocks, (work_items + per_block - 1) / per_block)));
}

// The (plane, row, column) of flat index i over (planes, rows, cols).
struct PlaneIndex {
  int64_t plane, row, col;
};
__device__ __forceinline__ PlaneIndex split(int64_t i, int64_t rows, int64_t cols) {
  const int64_t col = i % cols, rest = i / cols;
  return {rest / rows, rest % rows, col};
}

__device__ __forceinline__ float divisor_of(const Span& r, const Span& c, int64_t divisor_override,
                                            bool count_include_pad) {
  if (divisor_override) return static_cast<float>(divisor_override);
  return count_include_pad ? static_cast<float>(r.padded * c.padded)
                           : static_cast<float>((r.end - r.begin) * (c.end - c.begin));
}

// ------------------------------------------------------------------------------------ max pooling

template <class T, bool kIndices>
__global__ void max_pool_forward_kernel(const T* __restrict__ x, Geometry g, T* __restrict__ y,
                                        int64_t* __restrict__ indices) {
  const int64_t total = g.planes * g.out_plane();
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const PlaneIndex o = split(i, g.h.out, g.w.out);
    const Span rows = g.h.window(o.row), cols = g.w.window(o.col);
    const T* xp = x + o.plane * g.in_plane();  // (H, W)
    float m = -INFINITY;
    int64_t best = rows.begin * g.w.in + cols.begin;  // torch's start: the first tap's index
    for (int64_t ih = rows.begin; ih < rows.end; ih += rows.step)
      for (int64_t iw = cols.begin; iw < cols.end; iw += cols.step) {
        const float v = to_float(xp[ih * g.w.in + iw]);
        if (v > m || isnan(v)) {
          m = v;
          best = ih * g.w.in + iw;
        }
      }
    y[i] = from_float<T>(m);
    if (kIndices) indices[i] = best;
  }
}

template <class T>
__global__ void max_pool_backward_kernel(const T* __restrict__ dy, const int64_t* __restrict__ indices, Geometry g,
                                         T* __restrict__ dx) {
  const int64_t total = g.planes * g.in_plane();
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const PlaneIndex in = split(i, g.h.in, g.w.in);
    const Span rows = g.h.readers(in.row), cols = g.w.readers(in.col);
    const int64_t self = in.row * g.w.in + in.col;
    const int64_t base = in.plane * g.out_plane();
    float sum = 0.f;
    for (int64_t oh = rows.begin; oh < rows.end; ++oh)
      for (int64_t ow = cols.begin; ow < cols.end; ++ow) {
        const int64_t o = base + oh * g.w.out + ow;
        if (indices[o] == self) sum += to_float(dy[o]);
      }
    dx[i] = from_float<T>(sum);
  }
}

// -------------------------------------------------------------------------------- average pooling

// Average and adaptive average pooling share these two kernels: the axes say which windows.
template <class T>
__global__ void avg_pool_forward_kernel(const T* __restrict__ x, Geometry g, int64_t divisor_override,
                                        bool count_include_pad, T* __restrict__ y) {
  const int64_t total = g.planes * g.out_plane();
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const PlaneIndex o = split(i, g.h.out, g.w.out);
    const Span rows = g.h.window(o.row), cols = g.w.window(o.col);
    const T* xp = x + o.plane * g.in_plane();
    float sum = 0.f;
    for (int64_t ih = rows.begin; ih < rows.end; ++ih)
      for (int64_t iw = cols.begin; iw < cols.end; ++iw) sum += to_float(xp[ih * g.w.in + iw]);
    y[i] = from_float<T>(sum / divisor_of(rows, cols, divisor_override, count_include_pad));
  }
}

template <class T>
__global__ void avg_pool_backward_kernel(const T* __restrict__ dy, Geometry g, int64_t divisor_override,
                                         bool count_include_pad, T* __restrict__ dx) {
  const int64_t total = g.planes * g.in_plane();
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const PlaneIndex in = split(i, g.h.in, g.w.in);
    const Span rows = g.h.readers(in.row), cols = g.w.readers(in.col);
    const T* dyp = dy + in.plane * g.out_plane();
    float sum = 0.f;
    for (int64_t oh = rows.begin; oh < rows.end; ++oh) {
      const Span r = g.h.window(oh);
      for (int64_t ow = cols.begin; ow < cols.end; ++ow)
        sum += to_float(dyp[oh * g.w.out + ow]) / divisor_of(r, g.w.window(ow), divisor_override, count_include_pad);
    }
    dx[i] = from_float<T>(sum);
  }
}

// Global average pooling: one warp per plane.
template <class T>
__global__ void global_avg_pool_forward_kernel(const T* __restrict__ x, int64_t planes, int64_t plane_size,
                                               T* __restrict__ y) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t{gridDim.x} * kWarpsPerBlock;
  for (int64_t p = blockIdx.x * int64_t{kWarpsPerBlock} + (threadIdx.x >> 5); p < planes; p += warps) {
    const T* xp = x + p * plane_size;
    float sum = 0.f;
    for (int64_t i = lane; i < plane_size; i += 32) sum += to_float(xp[i]);
    sum = warp_sum(sum);
    if (lane == 0) y[p] = from_float<T>(sum / static_cast<float>(plane_size));
  }
}

}  // namespace

// ---------------------------------------------------------------------------------- entry points

template <>
void max_pool_forward<DeviceType::CUDA>(const TensorView& x, const Ints& kernel_size, const Ints& stride,
                                        const Ints& padding, const Ints& dilation, bool ceil_mode,
                                        const TensorView& y, const OptView& indices, std::uintptr_t stream) {
  const Geometry g = check_max_pool_forward(DeviceType::CUDA, x, kernel_size, stride, padding, dilation, ceil_mode,
                                            y, indices);
  const int64_t total = g.planes * g.out_plane();
  if (total == 0) return;
  dispatch_cuda_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (indices)
      max_pool_forward_kernel<T, true><<<blocks_for(total, kThreads), kThreads, 0, as_stream(stream)>>>(
          x.data_as<T>(), g, y.data_as<T>(), indices->data_as<int64_t>());
    else
      max_pool_forward_kernel<T, false><<<blocks_for(total, kThreads), kThreads, 0, as_stream(stream)>>>(
          x.data_as<T>(), g, y.data_as<T>(), nullptr);
  });
  REPLEARN_CUDA_LAUNCH_CHECK();
}

template <>
void max_pool_backward<DeviceType::CUDA>(const TensorView& dy, const TensorView& indices, const Ints& kernel_size,
                                         const Ints& stride, const Ints& padding, const Ints& dilation,
                                         bool ceil_mode, const TensorView& dx, std::uintptr_t stream) {
  const Geometry g = check_max_pool_backward(DeviceType::CUDA, dy, indices, kernel_size, stride, padding, dilation,
                                             ceil_mode, dx);
  const int64_t total = g.planes * g.in_plane();
  if (total == 0) return;
  dispatch_cuda_floating(dx.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    max_pool_backward_kernel<T><<<blocks_for(total, kThreads), kThreads, 0, as_stream(stream)>>>(
        dy.data_as<T>(), indices.data_as<int64_t>(), g, dx.data_as<T>());
  });
  REPLEARN_CUDA_LAUNCH_CHECK();
}

template <>
void avg_pool_forward<DeviceType::CUDA>(const TensorView& x, const Ints& kernel_size, const Ints& stride,
                                        const Ints& padding, bool ceil_mode, bool count_include_pad,
                                        int64_t divisor_override, const TensorView& y, std::uintptr_t stream) {
  const Geometry g = check_avg_pool_forward(DeviceType::CUDA, x, kernel_size, stride, padding, ceil_mode,
                                            divisor_override, y);
  const int64_t total = g.planes * g.out_plane();
  if (total == 0) return;
  dispatch_cuda_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    avg_pool_forward_kernel<T><<<blocks_for(total, kThreads), kThreads, 0, as_stream(stream)>>>(
        x.data_as<T>(), g, divisor_override, count_include_pad, y.data_as<T>());
  });
  REPLEARN_CUDA_LAUNCH_CHECK();
}

template <>
void avg_pool_backward<DeviceType::CUDA>(const TensorView& dy, const Ints& kernel_size, const Ints& stride,
                                         const Ints& padding, bool ceil_mode, bool count_include_pad,
                                         int64_t divisor_override, const TensorView& dx, std::uintptr_t stream) {
  const Geometry g = check_avg_pool_backward(DeviceType::CUDA, dy, kernel_size, stride, padding, ceil_mode,
                                             divisor_override, dx);
  const int64_t total = g.planes * g.in_plane();
  if (total == 0) return;
  dispatch_cuda_floating(dx.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    avg_pool_backward_kernel<T><<<blocks_for(total, kThreads), kThreads, 0, as_stream(stream)>>>(
        dy.data_as<T>(), g, divisor_override, count_include_pad, dx.data_as<T>());
  });
  REPLEARN_CUDA_LAUNCH_CHECK();
}

template <>
void adaptive_avg_pool_forward<DeviceType::CUDA>(const TensorView& x, int spatial_ndim, const TensorView& y,
                                                 std::uintptr_t stream) {
  const Geometry g = check_adaptive_avg_pool_forward(DeviceType::CUDA, x, spatial_ndim, y);
  const int64_t total = g.planes * g.out_plane();
  if (total == 0) return;
  dispatch_cuda_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (g.out_plane() == 1)
      global_avg_pool_forward_kernel<T><<<blocks_for(g.planes, kWarpsPerBlock), kThreads, 0, as_stream(stream)>>>(
          x.data_as<T>(), g.planes, g.in_plane(), y.data_as<T>());
    else  // adaptive windows: their divisor is the window's size (count_include_pad has no padding to count)
      avg_pool_forward_kernel<T><<<blocks_for(total, kThreads), kThreads, 0, as_stream(stream)>>>(
          x.data_as<T>(), g, 0, true, y.data_as<T>());
  });
  REPLEARN_CUDA_LAUNCH_CHECK();
}

template <>
void adaptive_avg_pool_backward<DeviceType::CUDA>(const TensorView& dy, int spatial_ndim, const TensorView& dx,
                                                  std::uintptr_t stream) {
  const Geometry g = check_adaptive_avg_pool_backward(DeviceType::CUDA, dy, spatial_ndim, dx);
  const int64_t total = g.planes * g.in_plane();
  if (total == 0) return;
  dispatch_cuda_floating(dx.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    avg_pool_backward_kernel<T><<<blocks_for(total, kThreads), kThreads, 0, as_stream(stream)>>>(
        dy.data_as<T>(), g, 0, true, dx.data_as<T>());
  });
  REPLEARN_CUDA_LAUNCH_CHECK();
}

}  // namespace replearn::pool
